"""HellaSwag, scored the way build-nanogpt scores it: pick the ending the model finds least surprising.

Each example is a context and four candidate endings, one of them right. The model reads the context
followed by each ending (prefixed with a space, as the text would continue) and we sum the cross-entropy
of the ending's tokens only. `acc` picks the ending with the lowest summed loss; `acc_norm` the lowest
mean loss per ending token, which stops long endings from being penalised for their length. This is the
"completion style" eval: the model never sees the four options side by side, so even small models score
above chance (OpenAI's GPT-2 124M: acc 0.2859, acc_norm 0.2955; GPT-2 XL: acc_norm 0.4893).

Decisions where build-nanogpt is silent or differs:
- Only logits over the real vocabulary (`[:vocab_size]`) enter the softmax. build-nanogpt uses the full
  padded logits (50304), whose extra rows a trained model has pushed towards -inf anyway; for unpadded
  models (every Hugging Face checkpoint) the two are identical.
- A sequence longer than the block size keeps its last `block_size` tokens (context cropped from the
  left), each ending on its own, so longer endings see a little less context. If an ending alone fills
  the block, its first token has nothing before it and is not scored. Neither happens with GPT-2's 1024.
- The loss is computed in float32 from the logits; the forward pass runs under the autocast dtype the
  caller passes (`amp`, from `gptscratch.precision`: the run's --dtype, or the command's).

Speed: 32 examples (128 sequences) per forward pass, sorted by length so little is padding. On one H100
a randomly initialised 124M model scores 10,042 examples of HellaSwag-like lengths in about 6 s (batch
32; 8 s at 16), GPT-2 XL's shape about 38 s.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptscratch.errors import UserError
from gptscratch.io import atomic_path
from gptscratch.paths import make_cache_dir
from gptscratch.precision import autocast
from gptscratch.tokenizer import Tokenizer, gpt2

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
# Lines in each official file, checked after download. The test split has no labels, so it is not here.
SPLIT_SIZES = {"train": 39905, "val": 10042}
NUM_ENDINGS = 4
# Sequence lengths are rounded up to a multiple of this, so a torch.compile'd model sees only a few
# shapes (about six for HellaSwag) instead of recompiling for every batch.
PAD_MULTIPLE = 32


@dataclass
class Example:
    """One HellaSwag item: the context, its four endings, and the index of the right one."""

    ctx: str
    endings: list[str]
    label: int
    ind: int | None = None  # the dataset's own id, kept for reporting


# --- the data file -------------------------------------------------------------------------------


def default_file(split: str = "val") -> Path:
    """The official `hellaswag_{split}.jsonl` in the cache directory, downloaded first if missing."""
    if split not in SPLIT_SIZES:
        splits = ", ".join(SPLIT_SIZES)
        raise UserError(f"--split {split!r}: expected one of {splits} (the test split has no labels)")
    path = make_cache_dir("hellaswag") / f"hellaswag_{split}.jsonl"
    if not path.exists():
        download(HELLASWAG_URL.format(split=split), path, SPLIT_SIZES[split])
    return path


def download(url: str, path: Path, expected_lines: int) -> Path:
    """Fetch `url` to `path` with a progress bar; a temp name until the line count checks out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=30) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, file=sys.stderr) as bar:
                        while chunk := resp.read(1 << 20):
                            out.write(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise UserError(
                    f"cannot download {url} ({reason}); pass --file PATH to a local copy of {path.name}"
                ) from None
        with open(tmp, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        if lines != expected_lines:
            raise UserError(
                f"{url}: downloaded {lines} examples, expected {expected_lines}; "
                f"try again or pass --file PATH to a good copy of {path.name}"
            )
    return path


def load_examples(path: str | os.PathLike, limit: int | None = None) -> list[Example]:
    """Parse a HellaSwag jsonl file (the official schema: `ctx`, `endings`, `label`, ...)."""
    path = Path(path)
    examples: list[Example] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if limit is not None and len(examples) >= limit:
                    break
                if line.strip():
                    examples.append(_parse_line(line, f"{path}:{lineno}"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; expected a HellaSwag .jsonl (pass --file PATH)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason}); expected a HellaSwag .jsonl") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not examples:
        raise UserError(f"{path}: no examples in the file; expected one JSON object per line")
    return examples


def _parse_line(line: str, where: str) -> Example:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg}); expected one HellaSwag example a line") from None
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object with ctx, endings and label")
    for key in ("ctx", "endings", "label"):
        if key not in d:
            hint = " (the test split has no labels)" if key == "label" else ""
            raise UserError(f"{where}: missing {key!r}; expected an example with ctx, endings, label{hint}")
    ctx, endings, label = d["ctx"], d["endings"], d["label"]
    if not isinstance(ctx, str):
        raise UserError(f"{where}: 'ctx' must be a string")
    if not (isinstance(endings, list) and len(endings) == NUM_ENDINGS
            and all(isinstance(e, str) for e in endings)):
        n = len(endings) if isinstance(endings, list) else type(endings).__name__
        raise UserError(f"{where}: 'endings' must be a list of {NUM_ENDINGS} strings, got {n}")
    # bool is an int in Python; json's true/false is not a label
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_ENDINGS:
        raise UserError(f"{where}: 'label' must be an integer 0-{NUM_ENDINGS - 1}, got {label!r}")
    ind = d.get("ind")
    return Example(ctx=ctx, endings=list(endings), label=label, ind=ind if isinstance(ind, int) else None)


# --- scoring ---------------------------------------------------------------------------------------


def _config(model: torch.nn.Module):
    """The GPTConfig behind a plain, DDP-wrapped or torch.compile'd model."""
    m = getattr(model, "module", model)  # DistributedDataParallel
    m = getattr(m, "_orig_mod", m)  # torch.compile
    return m.config


def encode_example(example: Example, enc) -> tuple[list[int], list[list[int]]]:
    """Context tokens, and each ending's tokens with the space that joins it to the context."""
    return enc.encode_ordinary(example.ctx), [enc.encode_ordinary(" " + e) for e in example.endings]


def _rows(ctx: list[int], ending: list[int], block_size: int) -> tuple[list[int], int]:
    """The tokens the model reads for one ending, and where the scored ending starts in them."""
    row = (ctx + ending)[-block_size:]  # crop the context from the left
    start = max(len(row) - len(ending), 1)  # the first token has no prediction to score
    return row, start


def ending_losses(
    model: torch.nn.Module,
    examples: list[Example],
    device: torch.device | str,
    batch_size: int = 32,
    progress: bool = False,
    amp: torch.dtype | None = None,
    tokenizer: Tokenizer | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean cross-entropy of each ending: two float32 (len(examples), 4) CPU tensors, the text
    encoded with the model's `tokenizer` (GPT-2's by default).

    `batch_size` examples (4 sequences each) share one forward pass. Sequences are right-padded, which
    needs no attention mask: causal attention never lets a real token see the padding after it.
    Examples are sorted by length first so a batch holds similar lengths and little padding.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    config = _config(model)
    block_size, vocab_size = config.block_size, config.vocab_size
    device = torch.device(device)
    enc = (tokenizer or gpt2()).enc
    if vocab_size < enc.n_vocab:
        raise UserError(f"model vocab_size={vocab_size} is smaller than its tokenizer's {enc.n_vocab} tokens")

    encoded = [encode_example(ex, enc) for ex in examples]
    rows = [[_rows(ctx, end, block_size) for end in ends] for ctx, ends in encoded]
    order = sorted(range(len(rows)), key=lambda i: max(len(r) for r, _ in rows[i]))
    sum_loss = torch.zeros(len(examples), NUM_ENDINGS)
    mean_loss = torch.zeros(len(examples), NUM_ENDINGS)
    # Keep the batch dimension fixed (the last batch is padded with empty rows) so compiled models see
    # only the few sequence lengths PAD_MULTIPLE allows.
    n_rows = NUM_ENDINGS * min(batch_size, len(examples))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(examples), desc="hellaswag", file=sys.stderr,
                                   disable=not progress) as bar:
            for b in range(0, len(order), batch_size):
                ids = order[b : b + batch_size]
                batch = [r for i in ids for r in rows[i]]
                longest = max(len(r) for r, _ in batch)
                T = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, block_size)
                idx = torch.zeros(n_rows, T, dtype=torch.long)
                scored = torch.zeros(n_rows, T - 1, dtype=torch.bool)  # position t predicts token t+1
                for j, (row, start) in enumerate(batch):
                    idx[j, : len(row)] = torch.tensor(row)
                    scored[j, start - 1 : len(row) - 1] = True
                idx, scored = idx.to(device), scored.to(device)
                with autocast(device, amp):
                    logits, _ = model(idx)
                logits = logits[:, :-1, :vocab_size][scored].float()  # only the ending tokens' predictions
                losses = F.cross_entropy(logits, idx[:, 1:][scored], reduction="none")
                row_of = scored.nonzero()[:, 0]
                sums = torch.zeros(n_rows, device=device).index_add_(0, row_of, losses)
                counts = scored.sum(1).clamp(min=1)
                sums, means = sums.cpu(), (sums / counts).cpu()
                k = len(ids)
                sum_loss[ids] = sums[: k * NUM_ENDINGS].view(k, NUM_ENDINGS)
                mean_loss[ids] = means[: k * NUM_ENDINGS].view(k, NUM_ENDINGS)
                bar.update(k)
    finally:
        model.train(was_training)
    return sum_loss, mean_loss


def hellaswag_eval(
    model: torch.nn.Module,
    examples: list[Example],
    device: torch.device | str,
    batch_size: int = 32,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    amp: torch.dtype | None = None,
    tokenizer: Tokenizer | None = None,
) -> dict:
    """Accuracy on `examples`: {'n', 'acc', 'acc_norm', 'num_correct', 'num_correct_norm'}.

    Rank r scores examples[r::world_size]; when torch.distributed is initialized the counts are summed
    over ranks, so every rank returns the global totals. The training loop passes the *uncompiled*
    module (as nanochat does), not the DDP wrapper nor torch.compile's output: eval shapes differ from
    training shapes, and a compiled model would recompile for them. Should a compiled model be passed
    anyway, sequence lengths are rounded up to multiples of PAD_MULTIPLE and the batch dimension is
    fixed, so it recompiles for only a handful of shapes. The model is put in eval mode for the call
    and its previous mode restored.
    """
    if not examples:
        raise ValueError("hellaswag_eval needs at least one example")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    shard = examples[rank::world_size]
    device = torch.device(device)
    counts = torch.zeros(3, dtype=torch.long)
    if shard:
        sum_loss, mean_loss = ending_losses(model, shard, device, batch_size, progress, amp, tokenizer)
        labels = torch.tensor([ex.label for ex in shard])
        counts[0] = len(shard)
        counts[1] = (sum_loss.argmin(1) == labels).sum()
        counts[2] = (mean_loss.argmin(1) == labels).sum()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        counts = counts.to(device)
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM)
        counts = counts.cpu()
    n, correct, correct_norm = (int(c) for c in counts)
    return {
        "n": n,
        "acc": correct / n,
        "acc_norm": correct_norm / n,
        "num_correct": correct,
        "num_correct_norm": correct_norm,
    }
