"""The `gptscratch` command. Each subcommand lives beside the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import codecs
import importlib
import json
import sys
from pathlib import Path

from gptscratch.errors import UserError
from gptscratch.precision import DTYPE_HELP, DTYPES

# Modules that add a subcommand through `register(subparsers)`, in the order of the journey.
COMMAND_MODULES = [
    "gptscratch.data.prepare",
    "gptscratch.train",
    "gptscratch.cli",  # sample, export
    "gptscratch.evaluate.cli",
    "gptscratch.plot",
]


def load_model_arg(args: argparse.Namespace, device):
    """The model named by --hf or --ckpt, on `device`, in eval mode."""
    if bool(args.hf) == bool(args.ckpt):
        raise UserError("give exactly one of --hf DIR_OR_ID or --ckpt PATH")
    if args.hf:
        from gptscratch.hf import load_hf

        model = load_hf(args.hf)
    else:
        from gptscratch.checkpoint import load_model

        model = load_model(args.ckpt)
    return model.to(device).eval()


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf", metavar="DIR_OR_ID", help="Hugging Face GPT-2 directory or hub id (gpt2, gpt2-xl, ...)")
    p.add_argument("--ckpt", metavar="PATH", help="a gptscratch checkpoint (run dir, checkpoints/ dir or one step)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from gptscratch.device import pick_device
    from gptscratch.generate import check_sampling, generate
    from gptscratch.precision import autocast_dtype
    from gptscratch.tokenizer import EOT_TOKEN, get_encoding

    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError("--max-new-tokens and --num-samples must be at least 1")
    device = pick_device(args.device)
    model = load_model_arg(args, device)
    amp = autocast_dtype(args.dtype, device)
    enc = get_encoding()
    prompt = enc.encode(args.prompt, allowed_special={"<|endoftext|>"})
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


def cmd_export(args: argparse.Namespace) -> int:
    from gptscratch.checkpoint import load_model
    from gptscratch.hf import save_hf

    path = save_hf(load_model(args.ckpt), args.out)
    arch = json.loads((Path(path) / "config.json").read_text())["architectures"][0]
    print(f"wrote a Hugging Face checkpoint to {path} (load it with {arch}.from_pretrained)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Forward to the benchmarks of the source checkout this package runs from; they are not installed with it."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise UserError("the benchmarks are not installed with the package: run them from a clone of the "
                        "repository, as `python -m benchmarks ...` in its root (see benchmarks/README.md)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as benchmarks_main

    return benchmarks_main(args.overrides, prog="gptscratch bench")


def register(sub) -> None:
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

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 directory",
                       description="Export a gptscratch checkpoint to config.json + model.safetensors.")
    p.add_argument("--ckpt", required=True, metavar="PATH")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", add_help=False, help="benchmarks against transformers and tiktoken, from a checkout "
                       "(the same as `python -m benchmarks`: train, generate, prepare, gpu)")
    p.set_defaults(func=cmd_bench, accepts_overrides=True)  # every argument goes to the benchmarks' own parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptscratch",
        description="GPT-2 from scratch: prepare data, train, evaluate, sample, export.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    args.overrides = extras
    return dispatch(parser, args, f"gptscratch {args.command}")


def dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> int:
    """Run the chosen command; a UserError becomes one line on stderr and exit code 2."""
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
