"""`python -m benchmarks NAME ...`: every benchmark of gptscratch, each against its reference (NAME --help)."""

from __future__ import annotations

import argparse
import sys

from benchmarks import (
    bpe_trainers,
    core,
    fsdp_memory,
    gpu,
    gpu_ab,
    loader_speed,
    peer_nanogpt,
    recipes,
    serve_bench,
    sft_packing,
    tokenizer_bpb,
    train_check,
    vs_tiktoken,
    vs_transformers,
)
from gptscratch.errors import UserError


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Benchmarks of gptscratch against its references; see benchmarks/README.md, and "
                               "benchmarks/RESULTS.md for the figures.")
    sub = parser.add_subparsers(dest="bench_command", metavar="NAME")
    vs_transformers.add_parsers(sub)  # train, generate
    vs_tiktoken.add_parsers(sub)  # prepare
    core.add_parsers(sub)  # core
    serve_bench.add_parsers(sub)  # serve
    loader_speed.add_parsers(sub)  # loader
    fsdp_memory.add_parsers(sub)  # fsdp-memory
    peer_nanogpt.add_parsers(sub)  # nanogpt
    recipes.add_parsers(sub)  # recipes
    sft_packing.add_parsers(sub)  # sft-packing
    gpu.add_parsers(sub)  # gpu
    gpu_ab.add_parsers(sub)  # gpu-ab
    train_check.add_parsers(sub)  # train-check
    bpe_trainers.add_parsers(sub)  # bpe-trainers
    tokenizer_bpb.add_parsers(sub)  # tokenizer-bpb
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run one benchmark; a UserError becomes one line on stderr and exit code 2."""
    parser = build_parser(prog)
    args, rest = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if rest and not getattr(args, "takes_train_args", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        args.train_args = rest  # train-check hands what it does not know to `gptscratch train`
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"{prog} {args.bench_command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
