"""A model's loss on a prepared corpus: mean cross-entropy over every window of a split, not a sample.

A window is seq_len + 1 tokens of the split's stream (its shards in order) at stride seq_len, the same
windows `--shuffle rows` trains on, so the number compares across models and runs of any batch order.
Only the real vocabulary enters the softmax (a padded model's extra rows are sliced off), as in
sampling and HellaSwag, so a padded and an unpadded copy of the same weights score the same.

Bits per byte, the number that compares models whose tokenizers differ: the summed loss in nats over the
target tokens, divided by ln 2 and by the UTF-8 bytes those tokens decode to. `<|endoftext|>` stands for no
text and is left out of both sums (nanochat's `val_bpb` does the same).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptscratch.data.shards import find_shards, open_shard
from gptscratch.errors import UserError
from gptscratch.model import GPT
from gptscratch.precision import autocast
from gptscratch.tokenizer import token_bytes


def split_windows(data_dir: str | Path, split: str, seq_len: int) -> torch.Tensor:
    """Every (seq_len + 1)-token window of the split at stride seq_len, as an int64 (windows, seq_len + 1)."""
    stream = np.concatenate([np.asarray(open_shard(s.path, sha256=s.sha256)) for s in find_shards(data_dir, split)])
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise UserError(f"{data_dir}: {split} split has {len(stream)} tokens, fewer than one window of "
                        f"--seq-len {seq_len} + 1")
    view = np.lib.stride_tricks.sliding_window_view(stream, seq_len + 1)[::seq_len][:n]
    return torch.from_numpy(view.astype(np.int64))


@torch.no_grad()
def split_loss(model: GPT, data_dir: str | Path, split: str = "val", seq_len: int | None = None,
               batch_size: int = 8, device: torch.device | str = "cpu", amp: torch.dtype | None = None,
               progress: bool = False) -> dict:
    """{loss, perplexity, bpb, tokens, bytes, windows, split, seq_len} of `model` over every window of the split."""
    seq_len = seq_len or model.config.block_size
    if seq_len > model.config.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's context of {model.config.block_size} tokens")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    windows = split_windows(data_dir, split, seq_len)
    was_training = model.training
    model.eval()
    total, count, text_nats, text_bytes = 0.0, 0, 0.0, 0
    V = model.config.vocab_size
    sizes = torch.from_numpy(token_bytes()).to(device)
    try:
        for i in tqdm(range(0, len(windows), batch_size), desc=f"loss {split}", unit="batch", disable=not progress):
            rows = windows[i:i + batch_size].to(device)
            with autocast(torch.device(device), amp):
                logits, _ = model(rows[:, :-1])
            targets = rows[:, 1:].flatten()
            losses = F.cross_entropy(logits[..., :V].float().flatten(0, 1), targets, reduction="none")
            total += losses.sum().item()
            count += targets.numel()
            nbytes = sizes[targets]
            text_nats += losses[nbytes > 0].sum().item()
            text_bytes += int(nbytes.sum())
    finally:
        model.train(was_training)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "bpb": text_nats / math.log(2) / max(text_bytes, 1),
            "tokens": count, "bytes": text_bytes, "windows": len(windows), "split": split, "seq_len": seq_len}
