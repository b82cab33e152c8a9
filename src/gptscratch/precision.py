"""One precision policy, from a run's `--dtype` and its device, for training, evaluation, HellaSwag and sampling.

`autocast_dtype` turns the setting into the dtype the matmuls run in (None: float32), once per run; the
callers pass that dtype on explicitly (the training step, the val loss, HellaSwag, generation), and the
model receives it as an argument rather than reading torch's global autocast state back. Weights stay
float32 throughout: autocast casts them per matmul, and AdamW updates the float32 master copy.
"""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

from gptscratch.device import cpu_has_bf16

Dtype = Literal["auto", "float32", "bf16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
DTYPE_HELP = ("auto: bf16 autocast on CUDA and on CPUs that multiply bf16 natively (AVX512-BF16/AMX), "
              "float32 elsewhere; float32: no autocast; bf16: autocast wherever torch allows it")


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs the matmuls in for the setting `dtype` on `device`; None for float32."""
    if dtype == "float32":
        return None
    if dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp: torch.dtype | None):
    """torch.autocast in `amp` on `device`, or nothing when `amp` is None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def allow_tf32(device: torch.device) -> None:
    """TF32 for the float32 matmuls and convolutions left outside autocast, on CUDA (a process-wide switch)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
