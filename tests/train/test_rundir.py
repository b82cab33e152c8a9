"""train/rundir.py: a run directory's one owner, what a new or resumed run may do to it, an unwritable --out."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gptscratch.cli import main
from tests.helpers import TINY, read_metrics, train_losses


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (the lock file aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "train.lock"}


def load_checkpoint_step(run: Path) -> int:
    from gptscratch.train.checkpoint import load_checkpoint

    return load_checkpoint(run).step


def test_a_new_run_refuses_a_directory_that_holds_a_run(shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--max-steps", "4", "--ckpt-interval", "2",
            "--eval-interval", "0", "--sample-tokens", "1"]
    assert main(["train", *args]) == 0
    before = tree(run)
    capsys.readouterr()
    assert main(["train", *args, "--lr", "1e-4"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (checkpoints/step_000004)" in err and "--resume" in err and "--overwrite" in err
    assert err.count("\n") == 1 and tree(run) == before  # nothing written, nothing removed
    # --overwrite replaces it: the old run's checkpoints go, the new run's alone remain
    assert main(["train", *args, "--max-steps", "3", "--overwrite"]) == 0
    assert "--overwrite: removed the run that was in" in capsys.readouterr().err
    assert sorted(c.name for c in (run / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    assert sorted(train_losses(run)) == [0, 1, 2]
    # a run killed before its first checkpoint left only config.json and metrics: --resume starts it again
    for c in (run / "checkpoints").iterdir():
        shutil.rmtree(c)
    assert main(["train", *args, "--max-steps", "2"]) == 2
    assert "already holds a run (config.json)" in capsys.readouterr().err
    assert main(["train", *args, "--max-steps", "2", "--resume"]) == 0
    assert sorted(train_losses(run)) == [0, 1]


def test_resume_writes_only_into_the_named_directory(shards, tmp_path, capsys):
    args = [*TINY, "--data", str(shards), "--max-steps", "4", "--ckpt-interval", "2", "--eval-interval", "0",
            "--sample-tokens", "1"]
    victim, run = tmp_path / "victim", tmp_path / "run"
    assert main(["train", *args, "--out", str(victim)]) == 0
    assert main(["train", *args, "--out", str(run)]) == 0
    untouched = tree(victim)
    # a crafted (or copied) checkpoint whose saved config points elsewhere
    state_path = run / "checkpoints" / "step_000002" / "state.json"
    state = json.loads(state_path.read_text())
    state["config"]["out"] = str(victim)
    state_path.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["train", "--resume", str(state_path.parent), "--max-steps", "6"]) == 0
    assert tree(victim) == untouched
    assert json.loads((run / "config.json").read_text())["out"] == str(run)
    assert load_checkpoint_step(run) == 6
    # resumed into another directory that holds a run: refused unless --overwrite
    assert main(["train", "--resume", str(state_path.parent), "--out", str(victim)]) == 2
    assert "already holds a run (checkpoints/step_000004) other than" in capsys.readouterr().err
    assert tree(victim) == untouched
    # a different preset on --resume would be recorded without taking effect: refused
    assert main(["train", "--resume", "--out", str(run), "--preset", "demo"]) == 2
    assert "--preset demo: " in capsys.readouterr().err


def test_resuming_an_older_step_sets_the_newer_timeline_aside(shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--ckpt-interval", "2", "--keep", "0",
            "--eval-interval", "0", "--sample-tokens", "1"]
    assert main(["train", *args, "--max-steps", "8"]) == 0
    old_metrics = read_metrics(run)
    old_step6 = tree(run / "checkpoints" / "step_000006")
    capsys.readouterr()
    assert main(["train", *args, "--max-steps", "6", "--lr", "2e-3", "--resume",
                 str(run / "checkpoints" / "step_000004")]) == 0
    err = capsys.readouterr().err
    [aside] = (run / "checkpoints").glob("abandoned-*")
    assert f"moved the newer checkpoints and metrics to {aside}" in err
    assert sorted(c.name for c in (run / "checkpoints").glob("step_*")) == [
        "step_000002", "step_000004", "step_000006"]
    # the abandoned timeline, whole: its checkpoints, its metrics from step 4 on, its config
    assert sorted(p.name for p in aside.iterdir()) == ["config.json", "metrics.jsonl", "step_000006", "step_000008"]
    assert tree(aside / "step_000006") == old_step6
    assert read_metrics(aside) == [r for r in old_metrics if r["step"] >= 4]
    assert json.loads((aside / "config.json").read_text())["lr"] == 1e-3
    # the run's own metrics: the old steps before 4, then the new timeline
    ours = read_metrics(run)
    assert [r for r in ours if r["step"] < 4] == [r for r in old_metrics if r["step"] < 4]
    assert sorted(train_losses(run)) == list(range(6))


def test_an_out_that_cannot_be_written_ends_in_one_line(shards, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out, message in ((blocker, "exists and is not a directory"), (blocker / "run", "Not a directory")):
        assert main(["train", *TINY, "--data", str(shards), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert main(["train", *TINY, "--data", str(shards), "--out", str(ro / "run")]) == 2
        assert "Permission denied" in capsys.readouterr().err
    import gptscratch.train.rundir

    def read_only(*args):  # a read-only mount, which root meets too
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(gptscratch.train.rundir.os, "open", read_only)
    assert main(["train", *TINY, "--data", str(shards), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'run' / 'train.lock'}: Read-only file system" in err and err.count("\n") == 1


def test_a_locked_run_dir_stops_every_torchrun_rank(shards, tmp_path):
    from gptscratch.train.rundir import RunLock

    run = tmp_path / "run"
    lock = RunLock(run)  # this process owns it
    try:
        ddp = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptscratch",
             "train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "2"],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
        )
    finally:
        lock.release()
    assert ddp.returncode != 0
    message = f"is in use by another training run (pid {os.getpid()})"
    assert ddp.stderr.count(message) == 2, ddp.stderr[-3000:]  # each rank stopped on it, none waited
    assert not (run / "config.json").exists()
