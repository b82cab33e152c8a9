"""TokenLoader: (x, y) batches from a split's shards, for one process or many DDP ranks.

The split is read as one token stream: its shards concatenated, in name order or, with shuffle,
in an order drawn afresh each epoch (FineWeb-Edu's shards differ in style, and a fixed order makes
the loss periodic, build-nanogpt #52). The stream is cut into windows of B*T tokens (plus the
one token after, for y); windows may span two shards, so nothing is dropped but the tail of the
epoch that is shorter than one window (build-nanogpt drops up to world_size windows per shard,
its #23/#42/#105). Shards are cut mid-document, so at a seam between two shuffled shards the text
jumps without an <|endoftext|>: one such seam per shard, negligible at 100M tokens a shard.

Windows are dealt to ranks round-robin over an endless sequence of epochs: rank r's k-th batch is
window k*world_size + r. Ranks therefore never read the same window in a step, and any
world_size * n consecutive batches (summed over ranks) are disjoint windows. The whole position is
the batch counter `step`, so `state_dict()` is a few ints, equal on every rank.

Shards are memory-mapped one (or two, at a boundary) at a time, so memory stays flat however many
shards a split has (nanoGPT #287). Each shard's ids are checked against the vocab size once, when
first opened.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gptscratch.data.shards import ShardInfo, find_shards, open_shard
from gptscratch.errors import UserError

OPEN_SHARDS = 2  # a window spans at most two shards unless shards are shorter than a window


class TokenLoader:
    def __init__(self, data_dir: str | os.PathLike, split: str, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int | None = None, shuffle: bool = False):
        if batch_size < 1 or seq_len < 1:
            raise UserError(f"batch_size and seq_len must be at least 1 (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in [0, world_size={world_size})")
        self.data_dir, self.split = Path(data_dir), split
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle
        self.seed = 0 if seed is None and shuffle else seed  # every rank must draw the same order
        self.shards: list[ShardInfo] = find_shards(self.data_dir, split)
        self.num_tokens = sum(s.tokens for s in self.shards)
        self.window = batch_size * seq_len
        need = self.window + 1
        if self.num_tokens < need:
            raise UserError(f"{self.data_dir}: {split} split has {self.num_tokens} tokens, fewer than one batch "
                            f"needs (batch_size*seq_len+1 = {batch_size}*{seq_len}+1 = {need})")
        self.windows_per_epoch = (self.num_tokens - 1) // self.window
        if self.windows_per_epoch < world_size:
            raise UserError(f"{self.data_dir}: {split} split has {self.windows_per_epoch} windows of "
                            f"{batch_size}*{seq_len} tokens, fewer than world_size {world_size}")
        self.step = 0  # batches this rank has returned
        self._order_epoch = -1
        self._starts: list[int] = []
        self._order: list[int] = []
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self._checked: set[Path] = set()

    @property
    def steps_per_epoch(self) -> int:
        """Batches each rank gets from one pass over the split."""
        return self.windows_per_epoch // self.world_size

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return (self.step * self.world_size + self.rank) // self.windows_per_epoch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 CPU tensors of shape (batch_size, seq_len), y being x shifted left by one."""
        epoch, index = divmod(self.step * self.world_size + self.rank, self.windows_per_epoch)
        buf = torch.from_numpy(self._read(epoch, index * self.window, self.window + 1).astype(np.int64))
        self.step += 1
        x = buf[:-1].view(self.batch_size, self.seq_len)
        y = buf[1:].view(self.batch_size, self.seq_len)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def reset(self) -> None:
        """Back to the first batch of the first epoch (a fixed val set evaluates the same windows)."""
        self.step = 0

    def state_dict(self) -> dict:
        """Plain ints and strings; identical on every rank, so rank 0's copy restores them all."""
        return {"step": self.step, "world_size": self.world_size, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "num_tokens": self.num_tokens, "shuffle": self.shuffle,
                "seed": self.seed, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        for key in ("batch_size", "seq_len", "num_tokens", "shuffle", "seed", "split"):
            if state.get(key) != getattr(self, key):
                raise UserError(f"loader state has {key}={state.get(key)!r} but this loader has "
                                f"{getattr(self, key)!r}; resume with the same data and batch shape")
        # A different world size keeps the number of windows consumed (up to world_size-1 may repeat).
        self.step = state["step"] * state["world_size"] // self.world_size

    # --- reading ---

    def _epoch_order(self, epoch: int) -> None:
        if epoch == self._order_epoch:
            return
        order = list(range(len(self.shards)))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)).tolist()
        self._order, self._order_epoch = order, epoch
        self._starts = list(np.cumsum([0] + [self.shards[i].tokens for i in order[:-1]]).tolist())

    def _tokens(self, shard: int) -> np.ndarray:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        info = self.shards[shard]
        tokens = open_shard(info.path, check_vocab=info.path not in self._checked)
        self._checked.add(info.path)
        self._open[shard] = tokens
        while len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)  # dropping the last reference unmaps the file
        return tokens

    def _read(self, epoch: int, offset: int, n: int) -> np.ndarray:
        """`n` tokens from position `offset` of epoch `epoch`'s stream."""
        self._epoch_order(epoch)
        out = np.empty(n, dtype=np.uint16)
        j = bisect.bisect_right(self._starts, offset) - 1
        filled = 0
        while filled < n:
            shard = self._order[j]
            local = offset + filled - self._starts[j]
            take = min(n - filled, self.shards[shard].tokens - local)
            if take > 0:
                out[filled:filled + take] = self._tokens(shard)[local:local + take]
                filled += take
            j += 1
        return out
