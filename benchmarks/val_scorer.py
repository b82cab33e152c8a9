"""The one scorer every quality comparison here uses: mean cross-entropy over every val window.

A window is seq_len + 1 tokens of the val split at stride seq_len (the whole split, not a sample), so two
models, or two trainers, are compared on exactly the same tokens whatever their own evaluation did.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptscratch.data.shards import find_shards, open_shard


def split_tokens(data: Path, split: str) -> np.ndarray:
    return np.concatenate([np.asarray(open_shard(s.path)) for s in find_shards(data, split)])


@torch.no_grad()
def score(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], val: np.ndarray, seq_len: int,
          batch: int = 16) -> tuple[float, int]:
    """(mean cross-entropy, windows) of `forward(x, y) -> logits` over every window of `val`."""
    n = (len(val) - 1) // seq_len
    rows = torch.from_numpy(np.lib.stride_tricks.sliding_window_view(val, seq_len + 1)[::seq_len][:n].astype(np.int64))
    total, count = 0.0, 0
    for i in range(0, n, batch):
        x, y = rows[i:i + batch, :-1].contiguous(), rows[i:i + batch, 1:].contiguous()
        logits = forward(x, y)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count, n


def score_run(run_dir: Path, val: np.ndarray, seq_len: int) -> float:
    """A gptscratch run's newest checkpoint, scored."""
    from gptscratch.train.checkpoint import load_model

    model = load_model(run_dir).eval()
    return score(lambda x, y: model(x)[0], val, seq_len)[0]
