"""Which device to run on, and what that device can do."""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

from gptscratch.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU; anything else must exist on this machine."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r}: unknown device; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


Attention = Literal["auto", "flash", "cudnn", "efficient", "math"]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(Attention)


def attention_backend(name: str, device: torch.device):
    """A context that limits F.scaled_dot_product_attention to one kernel; 'auto' lets torch choose.

    torch's own pick is usually right, but which kernel is fastest differs by card and torch version (on an
    H100, cuDNN's attention can beat FlashAttention-2), so `python -m benchmarks gpu-ab` measures it.
    """
    if name == "auto":
        return contextlib.nullcontext()
    if name not in ATTENTION_BACKENDS:
        raise UserError(f"--attention {name!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    if name in ("cudnn", "efficient") and device.type != "cuda":
        raise UserError(f"--attention {name}: that kernel runs on CUDA only; use auto, flash or math on {device.type}")
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        raise UserError(f"--attention {name}: needs torch >= 2.3 (this is {torch.__version__}); use auto") from None
    member = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
              "math": "MATH"}[name]
    if not hasattr(SDPBackend, member):
        raise UserError(f"--attention {name}: torch {torch.__version__} has no such kernel; use auto")
    return sdpa_kernel(getattr(SDPBackend, member))
