"""MFU: the per-GPU peak table and the formula."""

import pytest
import torch

from gptscratch import mfu
from gptscratch.model import GPTConfig


@pytest.mark.parametrize("name,tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA L4", 121), ("NVIDIA L40S", 362), ("NVIDIA A10", 125),
    ("NVIDIA GeForce RTX 4090", 165), ("NVIDIA GeForce RTX 3090", 71), ("Tesla V100-SXM2-16GB", 125),
    ("AMD Instinct MI300X", 1307),
])
def test_peak_flops_known_gpus(name, tflops):
    assert mfu.peak_flops(name) == tflops * 1e12


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA L40", "NVIDIA GeForce RTX 3090 Ti", "NVIDIA GeForce GTX 1080",
                                  "Some Future Accelerator"])
def test_peak_flops_unknown_gpu_is_none(name):
    assert mfu.peak_flops(name) is None


def test_peak_flops_cpu_is_none_and_mfu_is_a_fraction():
    assert mfu.peak_flops("cpu") is None and mfu.peak_flops(torch.device("cpu")) is None
    # build-nanogpt's A100 figure: ~182k tokens/s at 0.855 GFLOP/token is about half of 312 TFLOPS
    assert mfu.mfu(182_000, 0.855e9, 312e12) == pytest.approx(0.499, abs=1e-3)


def test_flops_per_token_by_hand():
    # GPT-2 124M at seq 1024: 6N + 12 * 12 layers * 768 (heads x head dim) * 1024
    cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768)
    assert mfu.flops_per_token(cfg, 1024, 124_475_904) == 6 * 124_475_904 + 12 * 12 * 768 * 1024
