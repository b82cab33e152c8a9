"""TokenLoader alone: batches/s for each --shuffle mode at the GPT-2 124M micro-batch (64 x 1024).

    python -m benchmarks loader --shards 8 --shard-tokens 25000000 --batches 400

Writes synthetic llm.c shards (random ids) into a temporary directory, opens a loader per mode as
rank 0 of `--world-size` (8: one process of an 8-GPU node) and times `next_batch()` alone. The
first batches of `rows` open (and vocab-check) every shard they touch: they are timed separately
as `first_s`, since a run pays them once. The modes alternate over `--repeats` so drift is shared.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gptscratch.data.loader import SHUFFLE_MODES, TokenLoader
from gptscratch.data.shards import shard_filename, write_shard


def make_shards(root: Path, shards: int, tokens: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(shards):
        write_shard(root / shard_filename("synthetic", "train", i + 1), rng.integers(0, 50257, tokens, dtype=np.uint16))


def batches_per_s(loader: TokenLoader, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        loader.next_batch()
    return n / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        make_shards(Path(tmp), args.shards, args.shard_tokens)
        loaders, first = {}, {}
        for mode in SHUFFLE_MODES:
            loaders[mode] = TokenLoader(tmp, "train", args.batch_size, args.seq_len, rank=0,
                                        world_size=args.world_size, seed=0, shuffle=mode)
            t0 = time.perf_counter()
            loaders[mode].next_batch()  # opens and vocab-checks the first shard(s)
            first[mode] = time.perf_counter() - t0
        runs: dict[str, list[float]] = {mode: [] for mode in SHUFFLE_MODES}
        for _ in range(args.repeats):
            for mode in SHUFFLE_MODES:
                runs[mode].append(batches_per_s(loaders[mode], args.batches))
    result = {mode: {"batches_per_s": round(statistics.median(r), 1), "repeats": [round(x, 1) for x in r],
                     "first_s": round(first[mode], 3)} for mode, r in runs.items()}
    for mode, r in result.items():
        print(f"--shuffle {mode:6s}: {r['batches_per_s']:8.1f} batches/s of {args.batch_size}x{args.seq_len} "
              f"(first batch {r['first_s']:.2f} s)")
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "bench_command")}
    print(json.dumps({"args": settings, "result": result}))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("loader", help="TokenLoader alone: batches/s of each --shuffle mode",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--shard-tokens", type=int, default=25_000_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--world-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=run)
