"""SFT batches: conversations packed back to back into rows (the loader's way) against one conversation a row.

    python -m benchmarks sft-packing [--steps 20] [--repeats 3]

Two synthetic corpora: `rule`, the single-turn conversations of tests/test_sft.py's effect test (about 15
tokens each) at seq_len 64, and `long`, multi-turn conversations of 2-8 turns with log-normal turn lengths (a
median conversation of 175 tokens, 90% under 340) at the sft preset's seq_len 512; batch 8 rows.
For each layout, over the batches of one epoch:

- `assistant/position`: the fraction of a batch's target positions that are the assistant's tokens (trained);
- `whole-context`: the fraction of those whose conversation starts in the same row (its question in view);
- `dropped`: the fraction of the corpus's assistant tokens that no batch trains on (cut off by a row's end);
- `positions/s` and `assistant tokens/s`: a training step (forward, backward, AdamW) of a 2-layer, 64-wide
  model at the batch's shape, timed A B C A B C over `--repeats`.

Layouts: `packed` is TokenLoader on `prepare --chat`'s shards (rows of seq_len + 1 tokens at stride seq_len,
conversations back to back); `row` gives each conversation a row of seq_len + 1 tokens, cut or padded (targets
-1); `row-trim` the same, a batch cut to its longest conversation (fewer positions, no fixed shape for
torch.compile). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptscratch.chat import encode_conversation
from gptscratch.data.loader import TokenLoader
from gptscratch.data.prepare import prepare
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import EOT_TOKEN

WORDS = ("the a of to and in is it that for on with as was be by this are or at from but not have they you "
         "which one all we their can has more when will would there what about if out up so some time into "
         "model data train token loss river candle violin garden rocket pebble lantern ocean feather castle").split()


def rule_corpus(n: int, rng: random.Random) -> list[list[dict]]:
    nouns = ["apple", "river", "candle", "mountain", "violin", "garden", "rocket", "pebble"]
    answers = ["seven", "purple", "Tuesday", "copper", "north", "zebra", "eleven", "silver"]
    out = []
    for _ in range(n):
        i = rng.randrange(len(nouns))
        out.append([{"role": "user", "content": f"What is the secret word for {nouns[i]}?"},
                    {"role": "assistant", "content": answers[i]}])
    return out


def long_corpus(n: int, rng: random.Random) -> list[list[dict]]:
    def text(median_words: float) -> str:
        words = max(1, int(rng.lognormvariate(np.log(median_words), 0.8)))
        return " ".join(rng.choice(WORDS) for _ in range(words))

    out = []
    for _ in range(n):
        turns = 2 * rng.randint(1, 4)
        out.append([{"role": "user" if t % 2 == 0 else "assistant", "content": text(12 if t % 2 == 0 else 40)}
                    for t in range(turns)])
    return out


def packed_batches(data: Path, batch: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = TokenLoader(data, "train", batch, seq_len, seed=0, shuffle="rows")
    return [loader.next_batch() for _ in range(loader.steps_per_epoch)]


def row_batches(conversations: list[tuple[list[int], list[int]]], batch: int, seq_len: int, trim: bool,
                rng: random.Random) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = list(range(len(conversations)))
    rng.shuffle(order)
    out = []
    for b in range(len(order) // batch):
        rows = [conversations[i] for i in order[b * batch:(b + 1) * batch]]
        width = min(seq_len, max(len(ids) for ids, _ in rows) - 1) if trim else seq_len
        x = torch.full((batch, width), EOT_TOKEN, dtype=torch.long)
        y = torch.full((batch, width), -1, dtype=torch.long)
        for r, (ids, mask) in enumerate(rows):
            ids, mask = ids[:width + 1], mask[:width + 1]
            x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            y[r, :len(ids) - 1] = torch.tensor([t if m else -1 for t, m in zip(ids[1:], mask[1:], strict=True)])
        out.append((x, y))
    return out


def whole_context(x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(assistant targets, those whose conversation's <|endoftext|> is in the row at or before them)."""
    starts = torch.cumsum(x == EOT_TOKEN, dim=1) > 0
    kept = y >= 0
    return int(kept.sum()), int((kept & starts).sum())


def step_seconds(batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int) -> float:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, n_layer=2, n_head=2, n_embd=64, vocab_size=50261, vocab_multiple=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batches[0]
    model(x, y, return_logits=False)[1].backward()  # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = batches[(i + 1) % len(batches)]
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y, return_logits=False)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def measure(name: str, conversations: list[list[dict]], seq_len: int, batch: int, steps: int, repeats: int,
            root: Path) -> dict:
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    data = root / name
    prepare(str(path), data, chat=True, val_tokens=2000, workers=1, progress=False)
    encoded = [encode_conversation(m) for m in conversations]
    assistant_total = sum(sum(mask) for _, mask in encoded)
    lengths = [len(ids) for ids, _ in encoded]
    layouts = {"packed": packed_batches(data, batch, seq_len),
               "row": row_batches(encoded, batch, seq_len, False, random.Random(0)),
               "row-trim": row_batches(encoded, batch, seq_len, True, random.Random(0))}
    result = {"seq_len": seq_len, "batch": batch, "conversations": len(conversations),
              "tokens_median": int(statistics.median(lengths)), "tokens_p90": int(np.percentile(lengths, 90)),
              "assistant_fraction_of_corpus": assistant_total / sum(lengths), "layouts": {}}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    for _ in range(repeats):  # A B C A B C: drift on a shared machine falls on every layout alike
        for k, batches in layouts.items():
            times[k].append(step_seconds(batches, steps))
    for k, batches in layouts.items():
        positions = sum(y.numel() for _, y in batches)
        kept, whole = map(sum, zip(*(whole_context(x, y) for x, y in batches), strict=True))
        seconds = statistics.median(times[k])
        per_step = positions / len(batches)
        result["layouts"][k] = {
            "assistant_per_position": kept / positions, "whole_context": whole / max(kept, 1),
            "assistant_tokens_per_epoch": kept, "positions_per_step": per_step, "step_s": seconds,
            "positions_per_s": per_step / seconds, "assistant_per_s": kept / len(batches) / seconds,
            # packed drops nothing but the split's last partial row (it reads the train split alone, so its
            # count is not the corpus's); a row drops what lies past seq_len + 1 tokens
            "dropped": None if k == "packed" else 1 - kept / assistant_total,
        }
    return result


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        rng = random.Random(0)
        out["rule"] = measure("rule", rule_corpus(2000, rng), 64, 8, args.steps, args.repeats, Path(tmp))
        out["long"] = measure("long", long_corpus(400, rng), 512, 8, args.steps, args.repeats, Path(tmp))
    for name, r in out.items():
        print(f"{name}: {r['conversations']} conversations, median {r['tokens_median']} tokens "
              f"(p90 {r['tokens_p90']}), seq_len {r['seq_len']}, assistant {r['assistant_fraction_of_corpus']:.0%} "
              "of the corpus", file=sys.stderr)
        for k, v in r["layouts"].items():
            dropped = "" if v["dropped"] is None else f", dropped {v['dropped']:.1%}"
            print(f"  {k:9s} assistant/position {v['assistant_per_position']:.1%}, whole-context "
                  f"{v['whole_context']:.1%}{dropped}, {v['positions_per_s']:,.0f} positions/s, "
                  f"{v['assistant_per_s']:,.0f} assistant tokens/s", file=sys.stderr)
    print(json.dumps(out))
    return 0



def add_parsers(sub) -> None:
    p = sub.add_parser("sft-packing", help="SFT batches: conversations packed into rows against one a row",
                       description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20, help="timed training steps per layout and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=run)
