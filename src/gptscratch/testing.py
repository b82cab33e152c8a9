"""A hook that lets the tests stop work at a chosen moment; it does nothing unless the tests set it.

The tests check that a kill at a bad time loses nothing: they run `gptscratch` in a subprocess with
GPTSCRATCH_TEST_HALT naming a moment, read its stderr until it says it halted there, and send SIGKILL.
The process halts for good at that moment, so the kill lands exactly there however loaded the machine
is (a sleep-and-poll would land wherever the scheduler let it). The moments, one call each in the code:

- `step:N`: after training step N-1, once N steps are done (train/loop.py), to kill a run between checkpoints;
- `checkpoint:N`: inside the write of checkpoint N, before its state.json (train/checkpoint.py), to kill a
  half-written checkpoint;
- `shard:N`: after `prepare` has written N shards (data/prepare.py), to kill it between shards.

`MOMENT@R` halts rank R alone (under torchrun), so that a test can kill one rank while the others carry on; a
halted process names its pid.

Unset (always, outside the tests), the hook costs one environment lookup. This module imports nothing
heavy: `prepare`'s worker processes never load torch.
"""

from __future__ import annotations

import os
import sys
import time

HALT = "GPTSCRATCH_TEST_HALT"
HALTED = "gptscratch-test: halted at"  # then the moment, on stderr


def halt(kind: str, n: int) -> None:
    """Halt here for good, saying so on stderr first, if GPTSCRATCH_TEST_HALT is `kind:n` (or `kind:n@R` on rank R)."""
    moment, _, rank = os.environ.get(HALT, "").partition("@")
    if moment == f"{kind}:{n}" and rank in ("", os.environ.get("RANK", "0")):
        print(f"{HALTED} {kind}:{n} (pid {os.getpid()})", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
