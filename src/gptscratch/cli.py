"""The `gptscratch` command: one parser, a subcommand for each step of the journey.

`prepare`, `train` and `plot` are registered by the modules they drive; `sample`, `chat`, `serve`, `export` and
`eval`, which load a model and call the library, are here, with the `bench` shim. Data flows one way: this
module imports the others, and nothing imports it. Every error a user can fix, argparse's included, ends
as one line on stderr and exit code 2; so does an OSError of the environment (a full disk, no permission).
"""

from __future__ import annotations

import argparse
import codecs
import difflib
import errno
import json
import sys
import textwrap
from pathlib import Path

import torch

from gptscratch import plot, repl
from gptscratch.chat import check_chat_model, get_chat_encoding, is_chat_model
from gptscratch.data import prepare
from gptscratch.data.shards import find_shards
from gptscratch.device import pick_device
from gptscratch.errors import UserError
from gptscratch.evaluate.hellaswag import default_file, hellaswag_eval, load_examples
from gptscratch.evaluate.loss import split_loss
from gptscratch.generate import check_sampling, generate
from gptscratch.hf import check_export_dir, load_hf, save_hf
from gptscratch.model import GPT
from gptscratch.precision import DTYPE_HELP, DTYPES, autocast_dtype
from gptscratch.tokenizer import EOT_TOKEN, get_encoding
from gptscratch.train import command as train_command
from gptscratch.train.checkpoint import find_checkpoint, load_model, run_dir_of
from gptscratch.train.config import BoolFlag

# OSErrors the user fixes (space, permissions, a path through a file), not bugs: one line and exit 2
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                      errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG}


class UsageError(Exception):
    """An argparse error, already formatted as `gptscratch CMD: error: ...`."""


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, never wrapping a line inside a --flag-name."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, BoolFlag):  # the value goes with --x only: --x [true|false], --no-x
            return f"{action.option_strings[0]} [true|false], {', '.join(action.option_strings[1:])}"
        return super()._format_action_invocation(action)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming the flag (the usage is one --help away)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)  # subcommands' parsers are made by this class too
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message}")


# --- sample, export, eval ------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf", metavar="DIR_OR_ID", help="Hugging Face GPT-2 directory or hub id (gpt2, gpt2-xl, ...)")
    p.add_argument("--ckpt", metavar="PATH", help="a gptscratch checkpoint (run dir, checkpoints/ dir or one step)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def check_model_args(args: argparse.Namespace) -> None:
    """Before any download or file read: exactly one of --hf and --ckpt."""
    if bool(args.hf) == bool(args.ckpt):
        raise UserError("give exactly one of --hf DIR_OR_ID or --ckpt PATH")


def load_model_arg(args: argparse.Namespace, device: torch.device) -> GPT:
    """The model named by --hf or --ckpt (checked by check_model_args), on `device`, in eval mode."""
    model = load_hf(args.hf) if args.hf else load_model(args.ckpt)
    return model.to(device).eval()


def cmd_sample(args: argparse.Namespace) -> int:
    check_model_args(args)
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError("--max-new-tokens and --num-samples must be at least 1")
    device = pick_device(args.device)
    model = load_model_arg(args, device)
    amp = autocast_dtype(args.dtype, device)
    # a chat model may sample chat tokens, shown by name; its prompt may hold them too
    enc = get_chat_encoding() if is_chat_model(model.config) else get_encoding()
    prompt = enc.encode(args.prompt, allowed_special=enc.special_tokens_set)
    if not prompt:
        raise UserError("--prompt encodes to no tokens; give some text (or '<|endoftext|>' to start fresh)")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"--- sample {i + 1} ---\n")
        out.write(args.prompt)
        out.flush()
        # tokens can split a multi-byte character: decode bytes incrementally
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def stream(tok: torch.Tensor, decoder=decoder) -> None:
            t = int(tok[0])
            if t != EOT_TOKEN:
                out.write(decoder.decode(enc.decode_single_token_bytes(t)))
                out.flush()

        idx = torch.tensor([prompt], dtype=torch.long, device=device)
        generate(
            model, idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            generator=gen, stop_token=None if args.no_stop else EOT_TOKEN, on_token=stream, amp=amp,
        )
        out.write(decoder.decode(b"", final=True) + "\n")
        out.flush()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    check_model_args(args)
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if args.system is not None and not args.system.strip():
        raise UserError("--system: the system message is empty; give some text or leave it out")
    device = pick_device(args.device)
    model = load_model_arg(args, device)
    check_chat_model(model.config, f"--{'hf' if args.hf else 'ckpt'} {args.hf or args.ckpt}")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {model_name(args)} ({model.config.block_size}-token context); {repl.HELP}",
              file=sys.stderr)
    return repl.talk(model, sys.stdin, sys.stdout, system=args.system, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                     amp=autocast_dtype(args.dtype, device), interactive=interactive)


def model_name(args: argparse.Namespace) -> str:
    """The id a served model goes by: its run directory's name (runs/demo -> demo), or the --hf dir or id."""
    if args.hf:
        return Path(args.hf).name if Path(args.hf).exists() else args.hf
    step = find_checkpoint(args.ckpt).resolve()
    return (run_dir_of(step) or step).name


def cmd_serve(args: argparse.Namespace) -> int:
    check_model_args(args)
    if args.max_batch < 1 or args.max_queue < 1:
        raise UserError("--max-batch and --max-queue must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: expected 0 (any free port) to 65535")
    from gptscratch.serve import check_installed, serve

    check_installed()
    device = pick_device(args.device)
    model = load_model_arg(args, device)
    name = args.model_name or model_name(args)
    serve(model, name, host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
          api_key=args.api_key, amp=autocast_dtype(args.dtype, device), max_body=args.max_body)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    check_export_dir(args.out, args.overwrite)  # before the (maybe long) load of the checkpoint
    path = save_hf(load_model(args.ckpt), args.out, overwrite=args.overwrite)
    arch = json.loads((Path(path) / "config.json").read_text())["architectures"][0]
    print(f"wrote a Hugging Face checkpoint to {path} (load it with {arch}.from_pretrained)")
    return 0


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


def cmd_loss(args: argparse.Namespace) -> int:
    check_model_args(args)
    if args.seq_len is not None and args.seq_len < 1:
        raise UserError(f"--seq-len {args.seq_len}: must be at least 1")
    find_shards(args.data, args.split)  # a missing or empty --data fails before the model loads
    device = pick_device(args.device)
    model = load_model_arg(args, device)
    result = split_loss(model, args.data, args.split, args.seq_len, args.batch_size, device,
                        autocast_dtype(args.dtype, device), progress=not args.json)
    which = " over the assistant's tokens" if result["chat"] else ""
    summary = (f"loss {args.data} {args.split}{which}: {result['loss']:.4f} (perplexity {result['perplexity']:.2f}, "
               f"{result['bpb']:.4f} bits per byte) over {result['windows']:,} windows of {result['seq_len']} tokens")
    if args.json:
        print(summary, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(summary)
    return 0


def register_model_commands(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a model, streamed to the terminal",
                       description="Generate text with a KV cache and stream it to the terminal.")
    add_model_args(p)
    p.add_argument("--prompt", default="<|endoftext|>", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set of mass P")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-stop", action="store_true", help="keep going past <|endoftext|>")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help=f"{DTYPE_HELP}. Default float32: decoding a token at a time is bound by reading the "
                   "weights, which autocast would cast to bf16 again at every step")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("chat", help="talk to a chat model in the terminal, each reply streamed",
                       description="A conversation with a chat model (trained with --preset sft): each line you type "
                       "is the user's turn, and the reply streams until the model ends its turn. /new starts a new "
                       "conversation; Ctrl-D (end of input) or /quit ends. Reads lines from a pipe too.")
    add_model_args(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message opening every conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 for greedy decoding (default 0.6)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set of mass P")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help=f"{DTYPE_HELP} (default float32, as sample's)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve a model: an OpenAI-compatible completions API and a playground page",
                       description="Serve a model over HTTP: POST /v1/completions (OpenAI's shape, streaming "
                       "included), GET /v1/models, GET /health, and a playground page at /. Concurrent requests "
                       "are decoded together, one forward pass per step. Needs the [serve] extra.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N", help="sequences decoded together (default 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting for a place in the batch before new ones get HTTP 429 (default 64)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    p.add_argument("--model-name", default=None, help="the model's id in the API (default: the --ckpt/--hf name)")
    p.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES", help="largest request body "
                   "(default 1 MiB)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help=f"{DTYPE_HELP}. Default float32, as sample's")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 directory",
                       description="Export a gptscratch checkpoint to config.json + model.safetensors.")
    p.add_argument("--ckpt", required=True, metavar="PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (a directory "
                   "holding config.json), as a whole")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="evaluate a model: hellaswag, or loss on a prepared corpus",
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


# --- bench ---------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    """Forward to the benchmarks of the source checkout this package runs from; they are not installed with it."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise UserError("the benchmarks are not installed with the package: run them from a clone of the "
                        "repository, as `python -m benchmarks ...` in its root (see benchmarks/README.md)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as benchmarks_main  # only here: it exists only in a checkout

    return benchmarks_main(args.rest, prog="gptscratch bench")


def register_bench(sub) -> None:
    p = sub.add_parser("bench", add_help=False, help="benchmarks against transformers and tiktoken, from a checkout "
                       "(the same as `python -m benchmarks`: train, generate, prepare, gpu)")
    p.set_defaults(func=cmd_bench, takes_rest=True)  # every argument, --help included, goes to the benchmarks


# --- the parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gptscratch", description="GPT-2 from scratch: prepare data, train, evaluate, sample, "
                    "export.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    prepare.register(sub)
    train_command.register(sub)
    register_model_commands(sub)
    plot.register(sub)
    register_bench(sub)
    return parser


def dashes(argv: list[str]) -> list[str]:
    """`--max_steps` and `--max_steps=20` as `--max-steps`...: flags are spelled with dashes or underscores."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":  # what follows is not a flag
            return out + argv[i:]
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            arg = key.replace("_", "-") + eq + value
        out.append(arg)
    return out


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, rest = parser.parse_known_args(dashes(argv))
    args.rest = rest
    if rest and not getattr(args, "takes_rest", False):
        name = " ".join(["gptscratch", *([args.command] if args.command else [])])
        close = difflib.get_close_matches(rest[0].partition("=")[0], getattr(args, "known_flags", []), n=1)
        hint = f"; did you mean {close[0]}? ({name} --help lists every setting)" if close else ""
        raise UsageError(f"{name}: error: unrecognized arguments: {' '.join(rest)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; a UserError or an argparse error becomes one line on stderr and exit code 2."""
    parser = build_parser()
    try:
        args = parse_args(parser, sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        message = " ".join(str(e).splitlines())  # one line, whatever a library put in the message
        print(f"gptscratch {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        # a full disk or a read-only directory met where no UserError names it: still one line
        print(f"gptscratch {args.command}: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptscratch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
