"""Checkpoints written by earlier versions still resume, and repeat the run they came from."""

import json
import shutil
from pathlib import Path

import pytest

from gptscratch.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "ckpt_1ae9fdd"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


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
        for k in keys[1:]:
            if k in theirs:
                assert ours[k] == pytest.approx(theirs[k], rel=1e-5, abs=0), (ours["step"], k)
    assert (run / "checkpoints" / "step_000006" / "model.safetensors").exists()
