"""What several test files share: shard writing, metrics reading, running the command, the halt hook's wait,
DDP's equivalence check, and the serving tests' model and engine driver. Fixtures live in conftest.py; a test
file imports helpers from here, never from another test file."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gptscratch import testing
from gptscratch.model import GPT, GPTConfig

TINY = ["--preset", "tiny", "--device", "cpu"]  # the default batch order: rows


def write_llmc_shard(path: Path, tokens, magic: int = 20240520, version: int = 1, count: int | None = None) -> None:
    """An llm.c shard written by hand (a 256-int32 header, then uint16 tokens), independently of data.shards;
    `magic`, `version` and `count` may lie, to make damaged shards."""
    tokens = np.asarray(tokens)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, version, len(tokens) if count is None else count)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def gptscratch(*args, env=None, **kw) -> subprocess.Popen:
    """`python -m gptscratch ARGS` in a process of its own, its output piped."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "gptscratch", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def halted(p: subprocess.Popen) -> str:
    """Read p's stderr until p halts at its test hook (testing.halt); what it printed until then.

    The process stays halted until killed, so whatever happens next happens at exactly that moment,
    however slowly a loaded machine runs it; no sleep or poll decides it.
    """
    seen = []
    watchdog = threading.Timer(600, p.kill)  # a process that hangs before the hook fails the test, not CI
    watchdog.start()
    try:
        for line in p.stderr:
            seen.append(line)
            if testing.HALTED in line:
                return "".join(seen)
    finally:
        watchdog.cancel()
    p.wait()
    raise AssertionError(f"exit {p.returncode} before the test hook:\n" + "".join(seen)[-3000:])


def assert_ddp_equals_accumulation(common: list[str], tmp_path: Path) -> None:
    """2 torchrun processes (gloo) train as 1 process with 2 accumulation steps: the same losses and weights."""
    single = gptscratch("train", *common, "--out", str(tmp_path / "one"))
    assert single.wait(timeout=300) == 0, single.stderr.read()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun binds its own free port and keeps it; a port picked here and released would
    # be free to another process before torchrun binds it (a test that failed under load)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptscratch",
         "train", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from gptscratch.train.checkpoint import load_model

    a = load_model(tmp_path / "one").state_dict()
    b = load_model(tmp_path / "two").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert train_losses(tmp_path / "one").keys() == train_losses(tmp_path / "two").keys()
    for s, loss in train_losses(tmp_path / "one").items():
        assert train_losses(tmp_path / "two")[s] == pytest.approx(loss, abs=1e-5)


def tiny_model(**options) -> GPT:
    """The serving tests' model: tiny, with weights spread wide enough that greedy decoding varies."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=1024, n_layer=2, n_head=2, n_embd=32, **options)).eval()
    for p in model.parameters():  # a random init this wide picks varied tokens; 0.02 would repeat one
        torch.nn.init.normal_(p, std=0.3)
    return model


def run_until_done(engine, requests: list, timeout: float = 600.0) -> None:
    """Submit and wait: for tests that drive the engine without HTTP. An engine not started
    yet is started once everything is submitted, so the requests are admitted together."""
    done: queue.SimpleQueue = queue.SimpleQueue()
    remaining = {id(r): r.n for r in requests}

    def watch(request, inner: Callable) -> Callable:
        def on_event(event) -> None:
            inner(event)
            if event.finish_reason is not None:
                done.put(id(request))
        return on_event

    for r in requests:
        r.on_event = watch(r, r.on_event)
        engine.submit(r)
    if engine.thread is None:
        engine.start()
    total = sum(remaining.values())
    deadline = time.monotonic() + timeout
    for _ in range(total):
        done.get(timeout=max(0.0, deadline - time.monotonic()))
