"""`gptscratch train` itself on a GPU: tokens/s and MFU of a real run, with evaluation inside it.

    python -m benchmarks train-check --dry-run       # the tiny preset on the CPU, seconds
    python -m benchmarks train-check                 # on the GPU: about 2 minutes, compile included
    python -m benchmarks train-check --preset modern-124m --compile-mode max-autotune-no-cudagraphs

The gpt2-124m preset (compile, bf16 autocast, fused AdamW on CUDA) trains 30 steps of micro-batch 64 (2
micro-steps a step) on random llm.c shards, with val loss, HellaSwag (200 generated examples) and samples
inside the run, so that evaluation on the uncompiled module beside the compiled one is exercised for real.
Every flag this command does not know goes to `gptscratch train` after its own, so it can change any
setting. The last line is one JSON object: the median tokens/s and MFU of the steps after the first five
(compile and warm-up), and the val and HellaSwag rows. With OUT set, the run's metrics.jsonl and loss.png
are copied there as train_check[_TAG]_metrics.jsonl and train_check[_TAG]_loss.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from gptscratch.data.shards import shard_filename, write_shard

GPU_ARGS = ["--preset", "gpt2-124m", "--max-steps", "30", "--batch-size", "64", "--total-batch-tokens", "131072",
            "--warmup-steps", "5", "--eval-interval", "15", "--eval-batches", "4", "--hellaswag-interval", "15",
            "--ckpt-interval", "15", "--sample-tokens", "24"]
DRY_RUN_ARGS = ["--preset", "tiny", "--device", "cpu", "--max-steps", "6", "--eval-interval", "3",
                "--hellaswag-interval", "3", "--ckpt-interval", "3"]


def write_data(work: Path) -> Path:
    """Random-token shards (4M train, 0.5M val) and a HellaSwag file of 200 made-up examples in `work`."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4_000_000), ("val", 500_000)):
        write_shard(work / shard_filename("random", split, 0), rng.integers(0, 50257, n))
    hellaswag = work / "hellaswag.jsonl"
    with open(hellaswag, "w") as f:
        for i in range(200):
            f.write(json.dumps({
                "ind": i, "activity_label": "x", "ctx_a": "A man walks", "ctx_b": "into the",
                "ctx": "A man walks into the " + "room " * (i % 40), "split": "val", "split_type": "indomain",
                "label": i % 4, "endings": [f"bar {i}", "shop and buys bread", "park.", "house " * (1 + i % 5)],
                "source_id": "gen"}) + "\n")
    return hellaswag


def summarise(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "loss" in r]
    train = steps[5:] or steps  # the first steps compile and warm up
    mfu = [r["mfu"] for r in train if "mfu" in r]
    return {"train_tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in train)),
            "mfu_median": statistics.median(mfu) if mfu else None,
            "val": [r for r in rows if "val_loss" in r], "hellaswag": [r for r in rows if "hellaswag_n" in r]}


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hellaswag = write_data(work)
        out = work / "gpu_train"
        cmd = [sys.executable, "-m", "gptscratch", "train", *(DRY_RUN_ARGS if args.dry_run else GPU_ARGS),
               "--data", str(work), "--out", str(out), "--hellaswag-file", str(hellaswag), "--sample-prompt", "Hello",
               "--keep", "1", *args.train_args]
        print(" ".join(cmd), flush=True)
        code = subprocess.run(cmd).returncode
        if code != 0:
            print(f"gptscratch train exited {code}", file=sys.stderr)
            return code
        print(json.dumps(summarise(out)), flush=True)
        if os.environ.get("OUT"):
            tag = f"_{args.tag}" if args.tag else ""
            shutil.copy(out / "metrics.jsonl", Path(os.environ["OUT"]) / f"train_check{tag}_metrics.jsonl")
            if (out / "loss.png").exists():
                shutil.copy(out / "loss.png", Path(os.environ["OUT"]) / f"train_check{tag}_loss.png")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("train-check", allow_abbrev=False, help="gptscratch train itself on a GPU: tokens/s and MFU "
                       "with evaluation in the run (any train flag passes through)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the tiny preset on the CPU")
    p.add_argument("--tag", default="", help="names the files copied to $OUT: train_check_TAG_metrics.jsonl")
    p.set_defaults(func=run, train_args=[], takes_train_args=True)
