"""train/command.py: which run a command line means: --resume of a finished run, --init-from on --resume."""

from pathlib import Path

from gptscratch.cli import main
from tests.helpers import TINY, train_losses

FT = ["--preset", "finetune", "--device", "cpu", "--dtype", "float32", "--seq-len", "32", "--batch-size", "4",
      "--max-steps", "6", "--eval-interval", "3", "--eval-batches", "2", "--ckpt-interval", "3", "--sample-tokens",
      "2", "--num-samples", "1"]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (the lock file aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "train.lock"}


def test_a_resume_already_at_max_steps_says_the_run_is_complete_and_names_its_checkpoint(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "2", "--eval-interval", "0",
                 "--sample-tokens", "1"]) == 0
    before = tree(run)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"complete at step 2 (--max-steps 2); its checkpoint is {run / 'checkpoints' / 'step_000002'}." in out
    assert "None" not in out
    assert tree(run) == before  # nothing to train, so nothing written


def test_resume_with_another_init_from_is_refused_and_changes_nothing(hf_tiny, corpus, tmp_path, capsys):
    _, path = hf_tiny
    tuned, scratch = tmp_path / "tuned", tmp_path / "scratch"
    assert main(["train", *FT, "--init-from", str(path), "--data", str(corpus), "--out", str(tuned)]) == 0
    assert main(["train", *FT, "--vocab-multiple", "1", "--n-layer", "2", "--n-head", "4", "--n-embd", "64",
                 "--data", str(corpus), "--out", str(scratch)]) == 0
    other = tmp_path / "other"
    path.rename(other)  # any other source: the resumed run would read none of its weights
    before = {run: (run / "config.json").read_text() for run in (tuned, scratch)}
    capsys.readouterr()
    for run, began in ((tuned, f"began from --init-from {path}"), (scratch, "began from random weights")):
        assert main(["train", *FT, "--init-from", str(other), "--data", str(corpus), "--out", str(run),
                     "--resume", "--max-steps", "9"]) == 2
        err = capsys.readouterr().err
        assert f"--init-from {other}: " in err and began in err and err.count("\n") == 1, err
        assert (run / "config.json").read_text() == before[run]
        assert max(train_losses(run)) == 5  # no step was taken
