"""train/checkpoint.py: exact resume after SIGKILL, a kill during a write, --keep, a full disk, damaged
state.json; checkpoints written by earlier versions still resume and repeat the run they came from.
"""

import json
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch

from gptscratch import testing
from gptscratch.cli import main
from tests.helpers import TINY, gptscratch, halted, read_metrics, train_losses

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ckpt_1ae9fdd"


def load_checkpoint_step(run: Path) -> int:
    from gptscratch.train.checkpoint import load_checkpoint

    return load_checkpoint(run).step


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_sigkill_and_resume_gives_identical_losses(shards, tmp_path):
    common = [*TINY, "--data", str(shards), "--max-steps", "16", "--ckpt-interval", "4", "--eval-interval", "8",
              "--dtype", "float32"]  # exactness is promised for float32 on a CPU
    ref = tmp_path / "ref"
    p = gptscratch("train", *common, "--out", str(ref))
    assert p.wait(timeout=300) == 0, p.stderr.read()

    run = tmp_path / "killed"
    p = gptscratch("train", *common, "--out", str(run), env={testing.HALT: "step:10"})
    halted(p)  # steps 0-9 done, checkpoint 8 written
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert sorted(c.name for c in (run / "checkpoints").iterdir()) == ["step_000004", "step_000008"]
    assert max(train_losses(run)) == 9
    p = gptscratch("train", *common, "--out", str(run), "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    # A resume bug (a skipped or repeated batch, a lost optimizer state, the wrong lr step) moves losses by
    # ~1e-3 and weights by ~lr = 1e-3; the tolerances below are 100x tighter than that. They are not zero
    # because in about one full CI run in three a logged loss after a restart or a checkpoint differed in
    # its 7th digit while every later loss, and so the weights, stayed bit-identical (a float32 reduction
    # in torch's CPU kernels; see the issue notes). Bit-for-bit is what we see otherwise, and is reported.
    ours, theirs = train_losses(run), train_losses(ref)
    assert sorted(ours) == sorted(theirs) == list(range(16))
    assert ours == pytest.approx(theirs, rel=1e-5, abs=0)
    val = [r["val_loss"] for r in read_metrics(run) if "val_loss" in r]
    assert val == pytest.approx([r["val_loss"] for r in read_metrics(ref) if "val_loss" in r], rel=1e-5, abs=0)
    from gptscratch.io import read_safetensors

    final = read_safetensors(run / "checkpoints" / "step_000016" / "model.safetensors")
    expected = read_safetensors(ref / "checkpoints" / "step_000016" / "model.safetensors")
    assert final.keys() == expected.keys()
    assert max((final[k] - expected[k]).abs().max().item() for k in final) <= 1e-5
    if ours != theirs or any(not torch.equal(final[k], expected[k]) for k in final):
        warnings.warn("resume matched within float32 rounding but not bit for bit this time", stacklevel=1)


def test_kill_during_checkpoint_write_keeps_previous_and_the_lock_holds_until_then(shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--max-steps", "8", "--ckpt-interval", "4"]
    p = gptscratch("train", *args, env={testing.HALT: "checkpoint:8"})
    halted(p)  # checkpoint 4 complete, checkpoint 8 half written
    ckpts = run / "checkpoints"
    assert (ckpts / "step_000004").exists() and len(list(ckpts.glob(".tmp-step_000008-*"))) == 1
    # while it lives, the run owns its directory: a second run, new or resumed, fails at once naming it
    for extra in ([], ["--resume"], ["--overwrite"]):
        assert main(["train", *args, *extra]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another training run (pid {p.pid})" in err and err.count("\n") == 1
    assert len(list(ckpts.glob(".tmp-step_000008-*"))) == 1  # a refused run sweeps nothing
    p.send_signal(signal.SIGKILL)
    p.wait()
    from gptscratch.train.checkpoint import load_checkpoint

    saved = load_checkpoint(run)
    assert saved.step == 4
    saved.load_model()  # the weights are complete
    # the OS dropped the killed run's lock: a resumed run takes the directory, sweeps the half-written
    # checkpoint and finishes
    p = gptscratch("train", *args, "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert load_checkpoint(run).step == 8
    assert sorted(c.name for c in ckpts.iterdir()) == ["step_000004", "step_000008"]


def test_checkpoint_of_another_shape_is_refused(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "4", "--resume",
                 "--n-embd", "64"]) == 2
    assert "n_embd: checkpoint 32, run 64" in capsys.readouterr().err
    (run / "checkpoints" / "step_000002" / "model.safetensors").write_bytes(b"garbage")
    assert main(["sample", "--ckpt", str(run), "--device", "cpu"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_keep_holds_only_the_newest_checkpoints(shards, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "8", "--ckpt-interval", "2",
                 "--keep", "2", "--eval-interval", "0", "--sample-tokens", "1"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000006", "step_000008"]


def test_disk_full_while_writing_a_checkpoint_ends_in_one_line_and_leaves_no_partial_one(shards, tmp_path, capsys,
                                                                                        monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real_save, calls = safetensors.torch.save_file, []

    def full_on_second(*args, **kwargs):  # what safetensors raises when the disk is full
        calls.append(1)
        if len(calls) == 2:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_on_second)
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--max-steps", "4", "--ckpt-interval", "2",
            "--eval-interval", "0", "--sample-tokens", "1"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "error: cannot write" in err and "step_000004: No space left on device" in err
    assert err.splitlines()[-1].startswith("gptscratch train: error:") and "Traceback" not in err
    assert [c.name for c in (run / "checkpoints").iterdir()] == ["step_000002"]  # no partial directory
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert main(["train", *args, "--resume"]) == 0
    assert load_checkpoint_step(run) == 4


def test_checkpoint_from_commit_1ae9fdd_resumes_with_its_losses(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    # the uninterrupted run logged steps 0-5; its checkpoint at step 3 is the one kept
    expected = [r for r in metrics(run) if r["step"] >= 3]
    assert main(["train", "--resume", "--out", str(run), "--data", str(FIXTURE / "data")]) == 0
    got = [r for r in metrics(run) if r["step"] >= 3]
    keys = ("step", "loss", "val_loss", "grad_norm", "lr")
    assert [[k for k in keys if k in r] for r in got] == [[k for k in keys if k in r] for r in expected]
    for ours, theirs in zip(got, expected, strict=True):
        # val_loss is logged at the same steps but not compared: since a4bc9ad the estimate reads other val
        # rows (drawn from the whole split) than this commit's did, by design; training must not differ
        for k in ("loss", "grad_norm", "lr"):
            if k in theirs:
                assert ours[k] == pytest.approx(theirs[k], rel=1e-5, abs=0), (ours["step"], k)
    assert (run / "checkpoints" / "step_000006" / "model.safetensors").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(step="3"), "step, world_size, config or loader_states has the wrong type"),
    (lambda s: s.update(loader_states="rows"), "step, world_size, config or loader_states has the wrong type"),
    (lambda s: s.update(world_size=2), "step, world_size, config or loader_states has the wrong type or size"),
    (lambda s: s["loader_states"][0].update(step="7"), "loader state has step='7'"),
    (lambda s: s["model_config"].update(n_layer="2"), "model config n_layer='2': expected int"),
    (lambda s: s["model_config"].update(dropout=float("nan")), "model config dropout=nan, rope_base"),
    (lambda s: s["config"].update(lr="fast"), "--lr 'fast': expected a number (in the config of"),
    (lambda s: s["config"].update(eval_batches=0), "--eval-batches 0: expected an integer >= 1"),
])
def test_state_json_with_fields_of_the_wrong_type_fails_in_one_line_and_changes_nothing(tmp_path, capsys, edit,
                                                                                        message):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    state_path = run / "checkpoints" / "step_000003" / "state.json"
    state = json.loads(state_path.read_text())
    edit(state)
    state_path.write_text(json.dumps(state))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", "--out", str(run), "--data", str(FIXTURE / "data")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.lock"} == before
