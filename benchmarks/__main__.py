"""`python -m benchmarks train|generate|prepare|gpu|serve|core ...`: gptscratch against its references."""

from __future__ import annotations

import argparse
import sys

from benchmarks import core, gpu, serve_bench, vs_tiktoken, vs_transformers
from gptscratch.errors import UserError


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Benchmarks of gptscratch against its references; see benchmarks/RESULTS.md.")
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH")
    vs_transformers.add_parsers(sub)
    vs_tiktoken.add_parsers(sub)
    gpu.add_parsers(sub)
    serve_bench.add_parsers(sub)
    core.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> int:
    """Run one benchmark; a UserError becomes one line on stderr and exit code 2."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"{prog} {args.bench_command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
