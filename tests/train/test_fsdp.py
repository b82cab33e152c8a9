"""train/fsdp.py: --parallel fsdp under torchrun (2 processes, gloo): the same training as one process, exact
resume after SIGKILL, sharded checkpoints that resume at another world size and export like any other.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gptscratch import testing
from gptscratch.cli import main
from gptscratch.io import read_safetensors
from gptscratch.train.checkpoint import load_checkpoint, load_model
from tests.helpers import QUIET, TINY_FLOAT32, alive, gptscratch, halted, read_metrics, torchrun, train_losses


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: Linux, as the torchrun tests are)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def kill_torchrun(p: subprocess.Popen) -> None:
    """SIGKILL the agent and its workers (torchrun starts each in a session of its own, so killing the
    agent's group would leave them), then wait until every worker is gone: its lock goes with it."""
    workers = children(p.pid)
    assert workers, "torchrun has no workers"
    for pid in [p.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 60
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)


def finished(p: subprocess.Popen) -> None:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_fsdp_two_processes_equal_one_process_with_accumulation_and_export_alike(shards, tmp_path):
    common = [*TINY_FLOAT32, "--data", str(shards), "--max-steps", "10", "--batch-size", "2",
              "--total-batch-tokens", "128", "--eval-interval", "5", "--ckpt-interval", "5", *QUIET]
    rows = [{"ind": i, "activity_label": "a", "ctx_a": "The cat", "ctx_b": "sat", "ctx": "The cat sat",
             "split": "val", "split_type": "indomain", "label": i % 4, "endings": ["on the mat.", "down.", "up.", "x"],
             "source_id": "s"} for i in range(3)]
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = gptscratch("train", *common, "--out", str(tmp_path / "one"))  # 2 accumulation steps
    # HellaSwag and samples run on every FSDP rank (each forward pass all-gathers the weights)
    two = torchrun("train", *common, "--parallel", "fsdp", "--out", str(tmp_path / "two"),
                   "--hellaswag-interval", "5", "--hellaswag-file", str(tmp_path / "hs.jsonl"))
    assert one.wait(timeout=300) == 0, one.stderr.read()
    finished(two)
    # 3 examples over 2 ranks: 2 scored, so that each rank runs as many forward passes
    assert [r["hellaswag_n"] for r in read_metrics(tmp_path / "two") if "hellaswag_n" in r] == [2, 2]
    ours, theirs = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
    assert sorted(ours) == sorted(theirs) == list(range(10))
    assert ours == pytest.approx(theirs, abs=1e-5, rel=0)
    saved = load_checkpoint(tmp_path / "two")
    assert saved.sharded and saved.world_size == 2 and not (saved.path / "model.safetensors").exists()
    # consolidated on load: the same weights as the run without FSDP, and the same export
    assert max_diff(load_model(tmp_path / "two").state_dict(), load_model(tmp_path / "one").state_dict()) <= 1e-5
    for name in ("one", "two"):
        assert main(["export", "--ckpt", str(tmp_path / name), "--out", str(tmp_path / f"hf-{name}")]) == 0
    assert max_diff(read_safetensors(tmp_path / "hf-one" / "model.safetensors"),
                    read_safetensors(tmp_path / "hf-two" / "model.safetensors")) <= 1e-5


def test_fsdp_modern_recipe_with_muon_equals_one_process(shards, tmp_path):
    # rope, QK-norm, SwiGLU, an untied head, and Muon on sharded matrices (optim.ShardedMuon gathers them)
    common = [*TINY_FLOAT32, "--arch", "modern", "--optimizer", "muon", "--schedule", "wsd", "--data", str(shards),
              "--max-steps", "4", "--batch-size", "2", "--total-batch-tokens", "128", "--lr", "3e-3",
              "--eval-interval", "0", *QUIET]
    one = gptscratch("train", *common, "--out", str(tmp_path / "one"))
    two = torchrun("train", *common, "--parallel", "fsdp", "--out", str(tmp_path / "two"))
    assert one.wait(timeout=300) == 0, one.stderr.read()
    finished(two)
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), abs=1e-5, rel=0)
    assert max_diff(load_model(tmp_path / "two").state_dict(), load_model(tmp_path / "one").state_dict()) <= 1e-5


def test_fsdp_sigkill_in_a_checkpoint_write_then_resume_repeats_the_losses(shards, tmp_path, capsys):
    common = [*TINY_FLOAT32, "--parallel", "fsdp", "--data", str(shards), "--max-steps", "12", "--ckpt-interval", "4",
              "--eval-interval", "0", *QUIET]
    ref = torchrun("train", *common, "--out", str(tmp_path / "ref"))
    run = tmp_path / "killed"
    p = torchrun("train", *common, "--out", str(run), env={testing.HALT: "checkpoint:8"})
    halted(p)  # every rank wrote its shards of checkpoint 8; rank 0 halted before its state.json and rename
    kill_torchrun(p)
    finished(ref)
    ckpts = run / "checkpoints"
    assert load_checkpoint(run).step == 4 and len(list(ckpts.glob(".tmp-step_000008-*"))) == 1
    load_model(run)  # the previous checkpoint is whole
    finished(torchrun("train", *common, "--out", str(run), "--resume"))
    assert sorted(c.name for c in ckpts.iterdir()) == ["step_000004", "step_000008", "step_000012"]
    ours, theirs = train_losses(run), train_losses(tmp_path / "ref")
    assert sorted(ours) == list(range(12))
    assert ours == pytest.approx(theirs, rel=1e-5, abs=0)
    assert max_diff(load_model(run).state_dict(), load_model(tmp_path / "ref").state_dict()) <= 1e-5

    # another world size: DCP reshards the 2-rank checkpoint onto one process (FSDP over a group of one)
    capsys.readouterr()
    assert main(["train", *common, "--out", str(tmp_path / "one"), "--resume", str(ckpts / "step_000008")]) == 0
    assert "was saved by 2 process(es), resumed with 1" in capsys.readouterr().err
    assert sorted(train_losses(tmp_path / "one")) == list(range(8, 12))
    assert load_checkpoint(tmp_path / "one").world_size == 1

    # an FSDP checkpoint resumed without --parallel fsdp, a damaged one: one line each
    assert main(["train", *common, "--out", str(run), "--resume", "--max-steps", "14", "--parallel", "ddp"]) == 2
    assert "resume it with --parallel fsdp" in capsys.readouterr().err
    for shard_file in (ckpts / "step_000012" / "dcp").glob("*.distcp"):
        shard_file.write_bytes(b"garbage")
    assert main(["sample", "--ckpt", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read as the sharded weights" in err and err.count("\n") == 1


def test_fsdp_refuses_cuda_graphs(capsys):
    assert main(["train", "--preset", "tiny", "--parallel", "fsdp", "--compile-mode", "reduce-overhead"]) == 2
    assert "combine with --parallel fsdp" in capsys.readouterr().err


def test_fsdp_checkpoint_layout(shards, tmp_path):
    # one process under --parallel fsdp writes the same sharded layout (the GPU check's world size 1)
    assert main(["train", *TINY_FLOAT32, "--parallel", "fsdp", "--data", str(shards), "--out", str(tmp_path / "r"),
                 "--max-steps", "2", "--eval-interval", "0", *QUIET]) == 0
    step = Path(tmp_path / "r" / "checkpoints" / "step_000002")
    assert sorted(p.name for p in step.iterdir()) == ["dcp", "rng_rank0.pt", "state.json"]
    assert (step / "dcp" / ".metadata").exists()


def test_fsdp_holds_half_of_ddps_parameter_gradient_and_optimizer_bytes_per_rank(tmp_path):
    # `python -m benchmarks fsdp-memory` counts each rank's local tensors; 2 ranks: 16 bytes a parameter under
    # DDP (float32 weights, gradients, AdamW's two moments), 8 under FSDP (plus AdamW's step counters)
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "benchmarks", "fsdp-memory", "--preset", "tiny", "--steps", "1", "--json",
                        str(tmp_path / "m.json")], cwd=root,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ddp, sharded = json.loads((tmp_path / "m.json").read_text())
    for result, per_param in ((ddp, 16), (sharded, 8)):
        for rank in result["ranks"]:
            total = rank["params"] + rank["grads"] + rank["optimizer"]
            assert total / result["num_params"] == pytest.approx(per_param, rel=0.01)
