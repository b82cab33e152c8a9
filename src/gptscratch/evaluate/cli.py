"""`gptscratch eval hellaswag`: the HellaSwag accuracy of any model we can load."""

from __future__ import annotations

import argparse
import json
import sys

from gptscratch.errors import UserError
from gptscratch.precision import DTYPE_HELP, DTYPES


def cmd_hellaswag(args: argparse.Namespace) -> int:
    from gptscratch.cli import load_model_arg
    from gptscratch.device import pick_device
    from gptscratch.evaluate.hellaswag import default_file, hellaswag_eval, load_examples
    from gptscratch.precision import autocast_dtype

    if bool(args.hf) == bool(args.ckpt):  # checked again by load_model_arg; here before any download
        raise UserError("give exactly one of --hf DIR_OR_ID or --ckpt PATH")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    # Read the data before loading the model: a bad file should fail fast.
    path = args.file if args.file else default_file(args.split)
    examples = load_examples(path, limit=args.limit)
    device = pick_device(args.device)
    model = load_model_arg(args, device)
    amp = autocast_dtype(args.dtype, device)
    result = hellaswag_eval(model, examples, device, batch_size=args.batch_size, progress=True, amp=amp)
    summary = f"hellaswag {path}: n={result['n']} acc={result['acc']:.4f} acc_norm={result['acc_norm']:.4f}"
    if args.json:
        # stdout holds only the JSON line, so `| jq` works; the summary goes to stderr
        print(summary, file=sys.stderr)
        print(json.dumps({k: result[k] for k in ("n", "acc", "acc_norm")}))
    else:
        print(summary)
    return 0


def register(sub) -> None:
    from gptscratch.cli import add_model_args

    p = sub.add_parser("eval", help="evaluate a model on a benchmark (hellaswag)",
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
