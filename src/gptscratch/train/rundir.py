"""A run directory belongs to one run: the lock that says so, and what a new or a resumed run may do to it.

- `train.lock`: rank 0 holds an advisory `fcntl.flock` on it for the run's life. The OS drops it when the
  process dies, so a killed run leaves no stale lock; a second run into the directory fails at once,
  naming the holder's pid. The file stays behind; only the flock on it means anything.
- A new run refuses a directory that already holds a run (config.json, metrics.jsonl or a checkpoint):
  continue it with --resume, choose a new --out, or pass --overwrite, which removes that run's files (and
  only those).
- A resumed run writes into the directory named by --out or, without it, the one holding its checkpoint;
  never into a path read from the checkpoint. Resuming an older step than the newest keeps the newer
  timeline: its checkpoints, the metrics lines from that step on and its config.json move to
  `checkpoints/abandoned-<time>/`, and stderr says so.
- With the lock held, what a killed checkpoint write left behind (`checkpoints/.tmp-step_*`) is removed.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from gptscratch.errors import UserError
from gptscratch.io import write_json, write_text, writing
from gptscratch.train.checkpoint import list_checkpoints, run_dir_of, step_of

LOCK = "train.lock"
RUN_FILES = ("config.json", "metrics.jsonl", "loss.png")  # what a run writes beside checkpoints/


class RunLock:
    """The flock on RUN/train.lock, taken at once or refused with the holder's pid."""

    def __init__(self, run_dir: Path):
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--out {run_dir}: exists and is not a directory")
        path = run_dir / LOCK
        with writing(path):
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{run_dir} is in use by another training run (pid {holder}); wait for it to end or "
                            "choose another --out") from None
        except OSError as e:  # a filesystem without flock (some network mounts): run, but say it is unguarded
            print(f"gptscratch train: cannot lock {path} ({e.strerror}); nothing stops a second run into "
                  f"{run_dir}", file=sys.stderr)
        os.ftruncate(fd, 0)  # only the holder writes its pid, so a refused run cannot wipe it
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def continues(run_dir: Path, saved: Path | None) -> bool:
    """Whether a run into `run_dir` from checkpoint `saved` continues the run that directory holds."""
    holder = run_dir_of(saved) if saved is not None else None
    return holder is not None and holder.exists() and run_dir.exists() and holder.samefile(run_dir)


def held_run(run_dir: Path, checkpoints_only: bool = False) -> str | None:
    """What shows that `run_dir` holds a run (a path in it), or None."""
    found = list_checkpoints(run_dir / "checkpoints")
    if found:
        return f"checkpoints/{found[-1].name}"
    names = () if checkpoints_only else ("config.json", "metrics.jsonl")
    return next((name for name in names if (run_dir / name).exists()), None)


def claim(run_dir: Path, saved: Path | None, resuming: bool, overwrite: bool) -> RunLock:
    """Lock `run_dir` for this run, or refuse a run that would clobber another's files; before any work.

    `resuming`: --resume was given. With no checkpoint to continue, the directory may hold a run killed
    before its first checkpoint, which has nothing to keep: a preemptible job always launches with --resume.
    """
    lock = RunLock(run_dir)
    if continues(run_dir, saved) or overwrite:
        return lock
    found = held_run(run_dir, checkpoints_only=resuming and saved is None)
    if found is None:
        return lock
    lock.release()
    if saved is None:
        raise UserError(f"--out {run_dir} already holds a run ({found}); continue it with --resume, choose a new "
                        "--out, or pass --overwrite to replace it")
    raise UserError(f"--out {run_dir} already holds a run ({found}) other than the one {saved} comes from; "
                    "choose a new --out, or pass --overwrite to replace it")


def make_ready(run_dir: Path, saved: Path | None, overwrite: bool, config: dict) -> None:
    """Rank 0, under the lock, once every check of the run has passed: sweep what a killed writer left, set
    aside or clear what this run replaces, and write its config.json."""
    sweep(run_dir / "checkpoints")
    metrics = run_dir / "metrics.jsonl"
    if continues(run_dir, saved):
        step = step_of(saved)
        aside = set_aside(run_dir, step)
        if aside is not None:
            print(f"gptscratch train: resuming step {step}, older than the run's newest checkpoint: moved the "
                  f"newer checkpoints and metrics to {aside}", file=sys.stderr)
        # what the interrupted run logged after its checkpoint, the resumed run logs again
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        write_text(metrics, "".join(ln + "\n" for ln in lines if _step_of(ln) < step))
    else:
        if overwrite and held_run(run_dir):
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            print(f"gptscratch train: --overwrite: removed the run that was in {run_dir}", file=sys.stderr)
        write_text(metrics, "")
    write_json(run_dir / "config.json", config)


def set_aside(run_dir: Path, step: int) -> Path | None:
    """Move the checkpoints after `step`, the metrics lines from `step` on and config.json into
    checkpoints/abandoned-<time>/; None when there is no newer checkpoint (an ordinary resume)."""
    ckpt_dir = run_dir / "checkpoints"
    newer = [c for c in list_checkpoints(ckpt_dir) if step_of(c) > step]
    if not newer:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = ckpt_dir / f"abandoned-{stamp}", 1
    while aside.exists():
        n += 1
        aside = ckpt_dir / f"abandoned-{stamp}-{n}"
    with writing(aside):
        aside.mkdir()
        for c in newer:
            os.replace(c, aside / c.name)
        if (run_dir / "config.json").exists():
            shutil.copy2(run_dir / "config.json", aside / "config.json")
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        write_text(aside / "metrics.jsonl", "".join(ln + "\n" for ln in metrics.read_text().splitlines()
                                                   if _step_of(ln) >= step))
    return aside


def sweep(ckpt_dir: Path) -> None:
    """Remove what a checkpoint write killed part way left behind (io.atomic_dir names it)."""
    for tmp in ckpt_dir.glob(".tmp-step_*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in ckpt_dir.glob(".old-step_*"):  # a replacement killed between its two renames
        final = ckpt_dir / old.name.removeprefix(".old-").rsplit("-", 1)[0]
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
