"""A model's loss on a prepared corpus: mean cross-entropy over every window of a split, not a sample.

A window is seq_len + 1 tokens of the split's stream (its shards in order) at stride seq_len, the same
windows `--shuffle rows` trains on, so the number compares across models and runs of any batch order.
Only the real vocabulary enters the softmax (a padded model's extra rows are sliced off), as in
sampling and HellaSwag, so a padded and an unpadded copy of the same weights score the same.

Bits per byte, the number that compares models whose tokenizers differ: the summed loss in nats over the
target tokens, divided by ln 2 and by the UTF-8 bytes those tokens decode to. `<|endoftext|>` stands for no
text and is left out of both sums (nanochat's `val_bpb` does the same).

On chat data (`prepare --chat`) both are over the tokens the assistant writes (`chat.assistant_mask`), the
number SFT lowers; the model must be a chat model, whose vocabulary holds the chat tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptscratch.chat import assistant_mask
from gptscratch.data.shards import data_tokenizer, find_shards, is_chat_data, open_shard
from gptscratch.errors import UserError
from gptscratch.model import GPT
from gptscratch.precision import autocast
from gptscratch.tokenizer import Tokenizer, check_same, gpt2_for


def split_windows(data_dir: str | Path, split: str, seq_len: int,
                  tok: Tokenizer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of every (seq_len + 1)-token window of the split at stride seq_len, each int64
    (windows, seq_len); on chat data a target the assistant did not write is -1."""
    chat = is_chat_data(data_dir)
    tok = tok or data_tokenizer(data_dir)
    stream = np.concatenate([np.asarray(open_shard(s.path, sha256=s.sha256, vocab_size=tok.vocab_size))
                             for s in find_shards(data_dir, split)])
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise UserError(f"{data_dir}: {split} split has {len(stream)} tokens, fewer than one window of "
                        f"--seq-len {seq_len} + 1")

    def windows(a: np.ndarray) -> torch.Tensor:
        view = np.lib.stride_tricks.sliding_window_view(a, seq_len + 1)[::seq_len][:n]
        return torch.from_numpy(view.astype(np.int64))

    rows = windows(stream)
    if not chat:
        return rows[:, :-1], rows[:, 1:]
    targets = windows(np.where(assistant_mask(stream, eot=tok.eot), stream.astype(np.int64), -1))[:, 1:]
    return rows[:, :-1], targets


@torch.no_grad()
def split_loss(model: GPT, data_dir: str | Path, split: str = "val", seq_len: int | None = None,
               batch_size: int = 8, device: torch.device | str = "cpu", amp: torch.dtype | None = None,
               progress: bool = False, tokenizer: Tokenizer | None = None) -> dict:
    """{loss, perplexity, bpb, tokens, bytes, windows, split, seq_len, chat} of `model` over every window of the
    split; `tokens` counts the targets scored (on chat data, the assistant's). `tokenizer` is the model's (GPT-2's
    by default): data made with another is refused, its ids would mean other text."""
    seq_len = seq_len or model.config.block_size
    if seq_len > model.config.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's context of {model.config.block_size} tokens")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    tokenizer = tokenizer or gpt2_for(model.config.vocab_size)
    data_tok = data_tokenizer(data_dir)
    check_same(tokenizer, "the model", data_tok, f"--data {data_dir}")
    chat = is_chat_data(data_dir)
    if chat and not tokenizer.chat:  # its logits have no column for a chat token to score
        raise UserError(f"--data {data_dir}: holds conversations, which only a chat model scores (this model's "
                        f"vocabulary is {model.config.vocab_size} tokens, without the chat tokens)")
    inputs, targets_all = split_windows(data_dir, split, seq_len, data_tok)
    was_training = model.training
    model.eval()
    total, count, text_nats, text_bytes = 0.0, 0, 0.0, 0
    V = model.config.vocab_size
    sizes = torch.from_numpy(tokenizer.token_bytes(V)).to(device)
    try:
        for i in tqdm(range(0, len(inputs), batch_size), desc=f"loss {split}", unit="batch", disable=not progress):
            rows = inputs[i:i + batch_size].to(device)
            with autocast(torch.device(device), amp):
                logits, _ = model(rows)
            targets = targets_all[i:i + batch_size].to(device).flatten()
            losses = F.cross_entropy(logits[..., :V].float().flatten(0, 1), targets, reduction="none",
                                     ignore_index=-1)
            total += losses.sum().item()
            kept = targets >= 0
            count += int(kept.sum())
            nbytes = torch.where(kept, sizes[targets.clamp(min=0)], 0)
            text_nats += losses[nbytes > 0].sum().item()
            text_bytes += int(nbytes.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError(f"{data_dir}: the {split} split's windows hold no assistant tokens to score")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "bpb": text_nats / math.log(2) / max(text_bytes, 1),
            "tokens": count, "bytes": text_bytes, "windows": len(inputs), "split": split, "seq_len": seq_len,
            "chat": chat}
