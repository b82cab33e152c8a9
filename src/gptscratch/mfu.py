"""Model FLOPs utilisation: the FLOPs a training token costs, and the FLOP/s achieved as a fraction of the GPU's
nominal bf16 peak.

The peaks are the vendors' dense bf16 tensor-core figures (no 2:4 sparsity), from the datasheets. A GPU
not in the table gets None, and callers print "unknown GPU, no MFU" rather than guess a figure: an MFU
against the wrong peak is worse than none (nanoGPT's MFU, hard-coded to an A100, is the cautionary tale).
"""

from __future__ import annotations

import re

import torch

from gptscratch.model import GPTConfig

# (pattern matched against torch.cuda.get_device_name(), upper-cased; dense bf16 TFLOPS). First match
# wins, so variants (PCIe, NVL) come before the plain name. Word boundaries keep A10 from matching
# A100 or A10G, and L4 from matching L40S.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    (r"\bH100\b.*\bPCIE\b", 756.0),  # H100 PCIe
    (r"\bH100\b.*\bNVL\b", 835.0),  # H100 NVL (datasheet: 1,671 with sparsity)
    (r"\bH100\b", 989.0),  # H100 SXM, e.g. "NVIDIA H100 80GB HBM3"
    (r"\bH200\b.*\bNVL\b", 835.0),  # H200 NVL (datasheet: 1,671 with sparsity)
    (r"\bH200\b", 989.0),  # H200 SXM
    (r"\bA100\b", 312.0),  # A100 SXM and PCIe, 40 and 80 GB
    (r"\bL40S\b", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"\bRTX 4090\b(?!\s*D)", 165.0),  # GeForce RTX 4090, bf16 with fp32 accumulate
    (r"\bRTX 3090\b(?!\s*TI)", 71.0),
    (r"\bV100\b(?!S)", 125.0),  # no bf16: the fp16 tensor-core peak
    (r"\bMI300X\b", 1307.0),  # AMD Instinct MI300X
]


def peak_tflops(name: str) -> float | None:
    """Dense bf16 TFLOPS of the GPU called `name` (as torch.cuda.get_device_name() spells it), or None."""
    upper = name.upper()
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, upper):
            return tflops
    return None


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """Nominal dense bf16 peak in FLOP/s (989e12 for an H100 SXM) of `device`, or None when unknown.

    `device` is a torch device ('cuda', 'cuda:1', torch.device('cuda')), None for the current CUDA
    device, or a GPU name such as 'NVIDIA H100 80GB HBM3'. The CPU and MPS have no entry: None.
    """
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except (RuntimeError, ValueError):
            tflops = peak_tflops(device)  # not a device spec: a GPU name
            return None if tflops is None else tflops * 1e12
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda")
    if device.type != "cuda":
        return None
    tflops = peak_tflops(torch.cuda.get_device_name(device))
    return None if tflops is None else tflops * 1e12


def flops_per_token(config: GPTConfig, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token, PaLM appendix B: 6N for the matmuls plus 12·L·H·Q·T for attention."""
    head_dim = config.n_embd // config.n_head
    return 6 * n_params + 12 * config.n_layer * config.n_head * head_dim * seq_len


def mfu(tokens_per_s: float, flops_per_token: float, peak: float) -> float:
    """Fraction (0..1) of `peak` FLOP/s achieved at `tokens_per_s`, each costing `flops_per_token`."""
    if peak <= 0:
        raise ValueError(f"peak must be positive FLOP/s, got {peak}")
    return tokens_per_s * flops_per_token / peak


__all__ = ["PEAK_BF16_TFLOPS", "flops_per_token", "mfu", "peak_flops", "peak_tflops"]
