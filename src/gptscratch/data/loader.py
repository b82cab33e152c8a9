"""TokenLoader: (x, y) batches from a split's shards, for one process or many DDP ranks.

The split is one token stream: its shards concatenated in name order. How batches are cut from it
is `shuffle`:

- `rows` (training's default): the stream is cut into rows of seq_len + 1 tokens at stride seq_len
  (row k is tokens [k*T, k*T + T]; the last token of a row is the first of the next, as y needs),
  and each epoch visits every row exactly once, in a seeded random order. A batch is B rows from
  anywhere in the split, so one step's gradient sees many places in the corpus rather than one
  scene of one play: on a one-shard corpus this was worth about 0.27 nats at the demo's size against
  nanoGPT, which draws each row at a random offset (benchmarks/RESULTS.md). The order is a bijective
  hash of the row index (a keyed Feistel network over the next power of four, cycle-walked back
  into [0, rows)), so no permutation is materialised: memory is flat and a lookup is O(1) however
  many shards a split has.
- `shards`: llm.c's stream exactly. The stream is cut into windows of B*T consecutive tokens (plus
  one for y), with the shard order drawn afresh each epoch (FineWeb-Edu's shards differ in style,
  and a fixed order makes the loss periodic, build-nanogpt #52).
- `none`: the same windows in name order, every epoch alike.

The trainer's val estimate reads `rows` with seed 0, so every evaluation sees the same rows, drawn from the
whole split; `gptscratch eval loss` reads every window.

Windows and rows may span two shards, so nothing is dropped but the tail of the split shorter than
one window or row. At a seam between two shards the text jumps without an <|endoftext|>: one such
seam per shard, negligible at 100M tokens a shard.

Positions are dealt to ranks round-robin over an endless sequence of epochs: rank r's k-th batch is
batch k*world_size + r of the global sequence (with rows: rows (k*world_size + r)*B ... + B - 1 of
the epochs' concatenated row orders; a batch at an epoch's end takes its last rows from the next
epoch, so every epoch still covers each row once). Ranks therefore never read the same row or window
in a step, and N ranks read in one step what one process reads in N accumulation steps. The whole
position is the batch counter `step`, so `state_dict()` is a few ints, equal on every rank.

Chat data (`prepare --chat`) is read the same way, and a target the assistant did not write becomes -1, which
the loss ignores: the loss is the mean over the assistant's tokens. Which tokens those are follows from the ids
(`chat.assistant_mask`), given whether a row starts inside an assistant turn, which the loader looks up in the
positions of the split's chat tokens, found once when it opens. Rows pack conversations back to back, as
pretraining packs documents: on multi-turn conversations (a median of 175 tokens, seq_len 512) that trained
2.0x the assistant tokens per second of a row per conversation cut to its batch's longest, and 3.0x of one
padded to seq_len, though 28% of the assistant's tokens then see their conversation cut at the row's start
(`python -m benchmarks sft-packing`). `shards` order would join a conversation to another shard's, so chat data takes
`rows` or `none`.

Shards are memory-mapped when first read (at most two at a time for the sequential modes; with rows,
up to OPEN_SHARDS_ROWS, since a batch may touch many): a mapping costs address space, not memory.
Each shard is checked once, when first opened: its sha256 against the manifest's (when there is one)
and its ids against the vocab size.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from gptscratch.chat import assistant_mask
from gptscratch.data.shards import ShardInfo, data_tokenizer, find_shards, is_chat_data, open_shard
from gptscratch.errors import UserError

SHUFFLE_MODES = ("rows", "shards", "none")
OPEN_SHARDS = 2  # a window spans at most two shards unless shards are shorter than a window
OPEN_SHARDS_ROWS = 256  # rows come from anywhere: keep many shards mapped rather than remap per row
ROW_BLOCK = 1 << 16  # row-order entries computed at once (512 KiB)


def shuffle_mode(value: str | bool) -> str:
    """The mode's name; `True`/`False` are what loader states and configs before `rows` existed hold."""
    if isinstance(value, bool):
        return "shards" if value else "none"
    if value not in SHUFFLE_MODES:
        raise UserError(f"--shuffle {value!r}: expected one of {', '.join(SHUFFLE_MODES)}")
    return value


class RowPermutation:
    """A seeded bijection of [0, n), evaluated per index: a Feistel network plus cycle-walking.

    The network permutes [0, 4**h) for the smallest h with 4**h >= n (two halves of h bits, keyed
    rounds that each xor one half with a hash of the other: invertible whatever the hash). An index
    that lands at or above n is mapped again until it falls below n; since the network permutes the
    larger domain, this walks the index's cycle and gives a permutation of [0, n) (at most 4x the
    domain, so under four steps on average).
    """

    ROUNDS = 6

    def __init__(self, n: int, seed: int, epoch: int):
        self.n = n
        self.half = max(1, ((n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        rng = np.random.default_rng([seed, epoch])
        self.keys = [np.uint64(k) for k in rng.integers(0, 2**63, size=self.ROUNDS, dtype=np.int64)]

    @staticmethod
    def _hash(x: np.ndarray, key: np.uint64) -> np.ndarray:
        # splitmix64's finaliser: every input bit reaches every output bit; uint64 arrays wrap mod 2**64
        x = x ^ key
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    def _network(self, x: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half)
        left, right = x >> shift, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (self._hash(right, key) & self.mask)
        return (left << shift) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        out = self._network(np.asarray(index, dtype=np.uint64))
        outside = out >= self.n
        while outside.any():
            out[outside] = self._network(out[outside])
            outside = out >= self.n
        return out.astype(np.int64)


class TokenLoader:
    def __init__(self, data_dir: str | os.PathLike, split: str, batch_size: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int | None = None, shuffle: str | bool = "none"):
        if batch_size < 1 or seq_len < 1:
            raise UserError(f"batch_size and seq_len must be at least 1 (got {batch_size}, {seq_len})")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in [0, world_size={world_size})")
        self.data_dir, self.split = Path(data_dir), split
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle_mode(shuffle)
        self.seed = 0 if seed is None and self.shuffle != "none" else seed  # every rank must draw the same order
        self.shards: list[ShardInfo] = find_shards(self.data_dir, split)
        self.chat = is_chat_data(self.data_dir)
        self.tokenizer = data_tokenizer(self.data_dir)
        self.vocab_size = self.tokenizer.vocab_size
        if self.chat and self.shuffle == "shards":
            raise UserError(f"{self.data_dir}: chat data is read with --shuffle rows (or none); shards order would "
                            "join conversations of different shards")
        self.num_tokens = sum(s.tokens for s in self.shards)
        self.window = batch_size * seq_len
        need = self.window + 1
        if self.num_tokens < need:
            raise UserError(f"{self.data_dir}: {split} split has {self.num_tokens} tokens, fewer than one batch "
                            f"needs (batch_size*seq_len+1 = {batch_size}*{seq_len}+1 = {need})")
        self.windows_per_epoch = (self.num_tokens - 1) // self.window
        self.rows_per_epoch = (self.num_tokens - 1) // seq_len
        if self.windows_per_epoch < world_size:
            raise UserError(f"{self.data_dir}: {split} split has {self.windows_per_epoch} windows of "
                            f"{batch_size}*{seq_len} tokens, fewer than world_size {world_size}")
        self.step = 0  # batches this rank has returned
        self._order_epoch = -1
        self._starts: list[int] = []
        self._order: list[int] = []
        self._blocks: dict[tuple[int, int], np.ndarray] = {}  # (epoch, block) -> rows of that block
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self._max_open = OPEN_SHARDS_ROWS if self.shuffle == "rows" else OPEN_SHARDS
        self._checked: set[Path] = set()
        self._shard_tokens = np.array([s.tokens for s in self.shards], dtype=np.int64)
        self._stream_starts = np.cumsum(self._shard_tokens) - self._shard_tokens  # in name order
        self._offsets = np.arange(seq_len + 1)
        if self.chat:
            self._marks, self._mark_ids = self._chat_marks()

    @property
    def epoch(self) -> int:
        """The epoch of the next batch (of its first row, with rows)."""
        batch = self.step * self.world_size + self.rank
        if self.shuffle == "rows":
            return batch * self.batch_size // self.rows_per_epoch
        return batch // self.windows_per_epoch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 CPU tensors of shape (batch_size, seq_len), y being x shifted left by one."""
        batch = self.step * self.world_size + self.rank
        if self.shuffle == "rows":
            rows, starts = self._read_rows(batch * self.batch_size)
            x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1], dtype=np.int64))
            y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:], dtype=np.int64))
            if self.chat:
                y[~torch.from_numpy(assistant_mask(rows, self._inside(starts), self.tokenizer.eot)[:, 1:])] = -1
        else:
            epoch, index = divmod(batch, self.windows_per_epoch)
            tokens = self._read(epoch, index * self.window, self.window + 1)
            buf = torch.from_numpy(tokens.astype(np.int64))
            x = buf[:-1].view(self.batch_size, self.seq_len)
            y = buf[1:].view(self.batch_size, self.seq_len)
            if self.chat:  # `none` order: the stream is the name-order stream the marks index
                mask = assistant_mask(tokens, self._inside(np.array([index * self.window]))[0], self.tokenizer.eot)
                y = y.masked_fill(~torch.from_numpy(mask[1:]).view(self.batch_size, self.seq_len), -1)
        self.step += 1
        return x, y

    def reset(self) -> None:
        """Back to the first batch of the first epoch (a fixed val set evaluates the same windows)."""
        self.step = 0

    def state_dict(self) -> dict:
        """Plain ints and strings; identical on every rank, so rank 0's copy restores them all."""
        return {"step": self.step, "world_size": self.world_size, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "num_tokens": self.num_tokens, "shuffle": self.shuffle,
                "seed": self.seed, "split": self.split}

    def load_state_dict(self, state: dict) -> None:
        step, world = state.get("step"), state.get("world_size")
        if not (type(step) is int and type(world) is int and step >= 0 and world >= 1):  # bool is no int here
            raise UserError(f"loader state has step={step!r}, world_size={world!r}: expected integers >= 0 and "
                            ">= 1; a damaged checkpoint?")
        state = {**state, "shuffle": shuffle_mode(state.get("shuffle", "none"))}
        for key in ("batch_size", "seq_len", "num_tokens", "shuffle", "seed", "split"):
            if state.get(key) != getattr(self, key):
                raise UserError(f"loader state has {key}={state.get(key)!r} but this loader has "
                                f"{getattr(self, key)!r}; resume with the same data, batch shape and --shuffle")
        # A different world size keeps the number of batches consumed (up to world_size-1 may repeat).
        self.step = state["step"] * state["world_size"] // self.world_size

    # --- reading ---

    def _row_order(self, epoch: int, index: np.ndarray) -> np.ndarray:
        """Row `index` of epoch `epoch`'s order, from blocks of ROW_BLOCK computed at once and cached.

        One Feistel evaluation per batch would cost numpy's per-call overhead a dozen times a batch;
        a block serves the next ROW_BLOCK / (B * world_size) batches of this rank.
        """
        out = np.empty_like(index)
        for block in np.unique(index // ROW_BLOCK).tolist():
            key = (epoch, block)
            if key not in self._blocks:
                if len(self._blocks) >= 4:  # a batch spans two blocks (or two epochs) at most
                    self._blocks.pop(next(iter(self._blocks)))
                lo = block * ROW_BLOCK
                perm = RowPermutation(self.rows_per_epoch, self.seed, epoch)
                self._blocks[key] = perm(np.arange(lo, min(lo + ROW_BLOCK, self.rows_per_epoch)))
            here = index // ROW_BLOCK == block
            out[here] = self._blocks[key][index[here] - block * ROW_BLOCK]
        return out

    def _chat_marks(self) -> tuple[np.ndarray, np.ndarray]:
        """The stream positions of the split's <|endoftext|> and chat tokens, and those tokens: one pass over
        each shard when the loader opens (which checks them, as a first read does)."""
        positions, ids = [], []
        for shard in range(len(self.shards)):
            tokens = self._tokens(shard)
            here = np.flatnonzero(tokens >= self.tokenizer.eot)
            positions.append(here + self._stream_starts[shard])
            ids.append(np.asarray(tokens[here]))
        return np.concatenate(positions), np.concatenate(ids)

    def _inside(self, starts: np.ndarray) -> np.ndarray:
        """Whether each stream position lies inside an assistant turn: the chat token before it opens one."""
        before = np.searchsorted(self._marks, starts, side="left") - 1
        return (before >= 0) & (self._mark_ids[np.maximum(before, 0)] == self.tokenizer.assistant_start)

    def _read_rows(self, first: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows `first` ... `first + batch_size - 1` of the epochs' concatenated row orders, (B, T+1), and
        where each starts in the stream."""
        epochs, index = np.divmod(np.arange(first, first + self.batch_size), self.rows_per_epoch)
        if epochs[0] == epochs[-1]:
            rows = self._row_order(int(epochs[0]), index)
        else:  # the batch straddles two epochs
            rows = np.concatenate([self._row_order(int(e), index[epochs == e]) for e in np.unique(epochs).tolist()])
        starts = rows * self.seq_len
        shard_of = np.searchsorted(self._stream_starts, starts, side="right") - 1
        local = starts - self._stream_starts[shard_of]
        seam = local + self.seq_len + 1 > self._shard_tokens[shard_of]
        out = np.empty((self.batch_size, self.seq_len + 1), dtype=np.uint16)
        for shard in set(shard_of[~seam].tolist()):  # one gather for all the rows within a shard
            rows_here = np.flatnonzero((shard_of == shard) & ~seam)
            out[rows_here] = self._tokens(shard)[local[rows_here, None] + self._offsets]
        for i in np.flatnonzero(seam).tolist():  # a row across two shards
            out[i] = self._read(0, int(starts[i]), self.seq_len + 1)
        return out, starts

    def _epoch_order(self, epoch: int) -> None:
        if epoch == self._order_epoch:
            return
        order = list(range(len(self.shards)))
        if self.shuffle == "shards":
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)).tolist()
        self._order, self._order_epoch = order, epoch
        self._starts = list(np.cumsum([0] + [self.shards[i].tokens for i in order[:-1]]).tolist())

    def _tokens(self, shard: int) -> np.ndarray:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        info = self.shards[shard]
        first = info.path not in self._checked  # checked once per process, however often remapped
        tokens = open_shard(info.path, check_vocab=first, sha256=info.sha256 if first else None,
                            vocab_size=self.vocab_size)
        self._checked.add(info.path)
        self._open[shard] = np.asarray(tokens)  # a plain view of the map: memmap's indexing costs more
        while len(self._open) > self._max_open:
            self._open.popitem(last=False)  # dropping the last reference unmaps the file
        return tokens

    def _read(self, epoch: int, offset: int, n: int) -> np.ndarray:
        """`n` tokens from position `offset` of epoch `epoch`'s stream (the name-order stream with rows)."""
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
