"""train/distributed.py: 2 torchrun processes (gloo) train as 1 process with accumulation, for both recipes;
a survivor names the rank that died.
"""

import os
import re
import signal
import subprocess
import sys

import pytest

from gptscratch import testing
from tests.helpers import QUIET, TINY_FLOAT32, assert_ddp_equals_accumulation, halted, torchrun


def test_ddp_two_processes_equal_one_process_with_accumulation(shards, tmp_path):
    common = [*TINY_FLOAT32, "--data", str(shards), "--max-steps", "3", "--batch-size", "2", "--dtype", "float32",
              "--total-batch-tokens", "128",
              "--eval-interval", "0", "--num-samples", "1", "--sample-tokens", "1"]
    assert_ddp_equals_accumulation(common, tmp_path)


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_when_a_rank_is_killed_the_survivor_stops_with_one_line_naming_it(shards, tmp_path, parallel):
    p = torchrun("train", *TINY_FLOAT32, "--parallel", parallel, "--data", str(shards), "--out", str(tmp_path / "run"),
                 "--max-steps", "20", "--eval-interval", "0", *QUIET, env={testing.HALT: "step:3@1"})
    seen = halted(p)  # rank 1 stopped after its third step; rank 0 waits for it in the next exchange
    os.kill(int(re.search(r"halted at step:3 \(pid (\d+)\)", seen)[1]), signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0
    survivor = [line for line in err.splitlines() if line.startswith("gptscratch train:")]
    assert survivor[-1].startswith("gptscratch train: error: rank 1 of 2 ended (killed, or crashed"), err[-3000:]
    assert "--resume" in survivor[-1]
    assert "[rank0]" not in err and "gloo" not in err, err[-3000:]  # no traceback of the survivor's


def test_a_survivor_names_the_ranks_whose_process_ended_in_a_world_of_more_than_two(monkeypatch):
    import socket

    import torch.distributed as dist

    from gptscratch.train import distributed

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # ended and reaped: its pid names no process now
    store = dist.HashStore()
    host = socket.gethostname()
    for rank, where in enumerate([f"{host} {os.getpid()}", f"{host} {gone.pid}", f"{host} {os.getpid()}",
                                  f"elsewhere {gone.pid}"]):  # a rank on another machine cannot be seen from here
        store.set(distributed.PROCESS_KEY.format(rank=rank), where)
    monkeypatch.setattr(distributed, "_store", lambda: store)
    d = distributed.Dist(rank=2, world_size=4)
    error = distributed.lost_rank(RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1234"), d)
    assert str(error).startswith("rank 1 of 4 ended (killed, or crashed") and "while rank 2 was" in str(error)
    # whatever the words, a rank whose process has ended is what stopped this one
    assert str(distributed.lost_rank(RuntimeError("Timed out"), distributed.Dist(rank=0, world_size=4))).startswith(
        "rank 1 of 4 ended")
    store.set(distributed.PROCESS_KEY.format(rank=1), f"{host} {os.getpid()}")  # every rank here alive
    assert distributed.lost_rank(RuntimeError("shape mismatch"), d) is None  # a bug keeps its traceback
    # the peer gone, and not from this machine: which rank cannot be told
    assert str(distributed.lost_rank(RuntimeError("Connection reset by peer"), d)).startswith("another rank of 4")
    assert distributed.lost_rank(ValueError("Connection closed by peer"), d) is None


MODERN = ["--preset", "tiny", "--device", "cpu", "--arch", "modern", "--optimizer", "muon", "--schedule", "wsd"]


def test_modern_ddp_two_processes_equal_one_process_with_accumulation(shards, tmp_path):
    common = [*MODERN, "--data", str(shards), "--max-steps", "3", "--batch-size", "2", "--total-batch-tokens", "128",
              "--eval-interval", "0", "--num-samples", "1", "--sample-tokens", "1"]
    assert_ddp_equals_accumulation(common, tmp_path)
