"""The README's two set-up commands stay true: CI runs the test command verbatim, and the demo's training runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_command(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"### {re.escape(heading)}\n.*?```bash\n(.+?)\n```", text, re.S)
    assert m, f"README has no bash block under '### {heading}'"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_command("Run the tests") in ci


def test_readme_main_command_trains_on_the_default_corpus(tmp_path):
    """The demo's last step, shortened by overrides, from an empty directory (so it prepares the data)."""
    command = readme_command("Train the demo")
    last = command.split("&&")[-1].split()
    assert last[0].endswith("gptscratch") and last[1:] == ["train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "gptscratch", "train", "--max-steps", "3", "--eval-batches", "1",
         "--sample-tokens", "4", "--num-samples", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "data" / "shakespeare" / "manifest.json").exists()
    assert "Sample with: gptscratch sample --ckpt runs/demo" in p.stdout
    assert (tmp_path / "runs" / "demo" / "checkpoints" / "step_000003" / "model.safetensors").exists()
