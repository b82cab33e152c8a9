"""Evaluations: HellaSwag, CORE, loss and bits per byte on a prepared corpus; `gptscratch eval` for each."""

from __future__ import annotations

import argparse
import json
import sys

from gptscratch.data.shards import find_shards
from gptscratch.device import pick_device
from gptscratch.errors import UserError
from gptscratch.evaluate import core
from gptscratch.evaluate.hellaswag import default_file, hellaswag_eval, load_examples
from gptscratch.evaluate.loss import split_loss
from gptscratch.hf.pretrained import add_model_args, check_model_args, load_model_arg
from gptscratch.precision import DTYPE_HELP, DTYPES, autocast_dtype
from gptscratch.train.distributed import init_distributed, on_master, shutdown


def cmd_hellaswag(args: argparse.Namespace) -> int:
    check_model_args(args)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    # Read the data before loading the model: a bad file should fail fast.
    path = args.file if args.file else default_file(args.split)
    examples = load_examples(path, limit=args.limit)
    device = pick_device(args.device)
    model, tokenizer = load_model_arg(args, device)
    amp = autocast_dtype(args.dtype, device)
    result = hellaswag_eval(model, examples, device, batch_size=args.batch_size, progress=True, amp=amp,
                            tokenizer=tokenizer)
    summary = f"hellaswag {path}: n={result['n']} acc={result['acc']:.4f} acc_norm={result['acc_norm']:.4f}"
    if args.json:
        # stdout holds only the JSON line, so `| jq` works; the summary goes to stderr
        print(summary, file=sys.stderr)
        print(json.dumps({k: result[k] for k in ("n", "acc", "acc_norm")}))
    else:
        print(summary)
    return 0


def cmd_loss(args: argparse.Namespace) -> int:
    check_model_args(args)
    if args.seq_len is not None and args.seq_len < 1:
        raise UserError(f"--seq-len {args.seq_len}: must be at least 1")
    find_shards(args.data, args.split)  # a missing or empty --data fails before the model loads
    device = pick_device(args.device)
    model, tokenizer = load_model_arg(args, device)
    result = split_loss(model, args.data, args.split, args.seq_len, args.batch_size, device,
                        autocast_dtype(args.dtype, device), progress=not args.json, tokenizer=tokenizer)
    which = " over the assistant's tokens" if result["chat"] else ""
    summary = (f"loss {args.data} {args.split}{which}: {result['loss']:.4f} (perplexity {result['perplexity']:.2f}, "
               f"{result['bpb']:.4f} bits per byte) over {result['windows']:,} windows of {result['seq_len']} tokens")
    if args.json:
        print(summary, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(summary)
    return 0


def cmd_core(args: argparse.Namespace) -> int:
    check_model_args(args)
    core.check_args(args)
    d, device = init_distributed(args.device)  # under torchrun each process scores its share of the examples
    try:
        on_master(d, lambda: core.bundle_path(args.bundle))  # one process downloads the bundle, if it must
        return core.run(args, lambda: load_model_arg(args, device), device, d.rank, d.world_size)
    finally:
        shutdown(d)


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model: hellaswag, core, or loss on a prepared corpus",
                       description="Evaluate a model on a benchmark.")
    evals = p.add_subparsers(dest="eval_command", metavar="BENCHMARK", required=True)
    h = evals.add_parser(
        "hellaswag", help="HellaSwag accuracy, completion style (acc and acc_norm)",
        description="Score each of the four endings by the model's loss on it; report acc (lowest total "
        "loss) and acc_norm (lowest loss per token), as build-nanogpt does.",
    )
    add_model_args(h)
    h.add_argument("--file", metavar="PATH", help="a HellaSwag .jsonl (default: download the official one "
                   "into $GPTSCRATCH_CACHE, else $XDG_CACHE_HOME/gptscratch, else ~/.cache/gptscratch)")
    h.add_argument("--split", default="val", choices=["val", "train"],
                   help="which official file to download when --file is not given (default val)")
    h.add_argument("--limit", type=int, metavar="N", help="score only the first N examples")
    h.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="examples per forward pass, 4 sequences each (default 32)")
    h.add_argument("--dtype", choices=DTYPES, default="auto", help=f"{DTYPE_HELP} (default auto, as train's)")
    h.add_argument("--json", action="store_true", help="print one JSON line {n, acc, acc_norm} on stdout")
    h.set_defaults(func=cmd_hellaswag)

    h = core.add_parser(evals)
    add_model_args(h)
    h.set_defaults(func=cmd_core)

    h = evals.add_parser(
        "loss", help="mean cross-entropy and perplexity over every window of a prepared split",
        description="Score a model on a corpus made by `gptscratch prepare`: every seq_len window of the split "
        "(not a sample), batched. The number to compare models, runs and fine-tunes by.",
    )
    add_model_args(h)
    h.add_argument("--data", required=True, metavar="DIR", help="a directory made by `gptscratch prepare`")
    h.add_argument("--split", default="val", choices=["val", "train"], help="which split (default val)")
    h.add_argument("--seq-len", type=int, default=None, metavar="T", help="window length (default: the model's "
                   "context)")
    h.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward pass (default 8)")
    h.add_argument("--dtype", choices=DTYPES, default="float32", help=f"{DTYPE_HELP} (default float32)")
    h.add_argument("--json", action="store_true", help="print one JSON line on stdout")
    h.set_defaults(func=cmd_loss)
