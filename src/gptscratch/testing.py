"""Hooks that let the tests stop work at a chosen moment; they do nothing unless the tests set them.

The tests check that a kill at a bad time loses nothing: they run `gptscratch` in a subprocess with one
of these variables set to a number of seconds, wait until the run reaches the moment of interest, and
send SIGKILL. Each hook is one call at that moment in the production code, named after it:

- GPTSCRATCH_TEST_STEP_DELAY: after every training step (train.py), to kill a run between checkpoints;
- GPTSCRATCH_TEST_CKPT_DELAY: inside a checkpoint write, before its state.json (checkpoint.py), to kill
  a half-written checkpoint;
- GPTSCRATCH_TEST_SHARD_DELAY: after every shard `prepare` writes (data/prepare.py), to kill it between
  shards.

Unset (always, outside the tests), a hook costs one environment lookup. This module imports nothing
heavy: `prepare`'s worker processes never load torch.
"""

from __future__ import annotations

import os
import time

STEP_DELAY = "GPTSCRATCH_TEST_STEP_DELAY"
CKPT_DELAY = "GPTSCRATCH_TEST_CKPT_DELAY"
SHARD_DELAY = "GPTSCRATCH_TEST_SHARD_DELAY"


def pause(hook: str) -> None:
    """Sleep for the seconds the environment variable `hook` holds, if it is set."""
    if seconds := float(os.environ.get(hook) or 0):
        time.sleep(seconds)
