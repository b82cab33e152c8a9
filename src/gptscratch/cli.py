"""The `gptscratch` command: one parser, a subcommand for each step of the journey.

Each command registers beside the code it drives (`register(sub)` in `data.prepare`, `train.command`,
`generate`, `repl`, `serve`, `hf`, `evaluate`, `plot`, `bpe`); this module only builds the parser from them and
runs the one asked for. Data flows one way: this module imports the others, and nothing imports it. Every error
a user can fix, argparse's included, ends as one line on stderr and exit code 2; so does an OSError of the
environment (a full disk, no permission).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import sys
import textwrap

from gptscratch import bpe, evaluate, generate, hf, plot, repl, serve
from gptscratch.data import prepare
from gptscratch.errors import UserError
from gptscratch.train import command as train_command
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


# --- the parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gptscratch", description="GPT-2 from scratch: prepare data, train, evaluate, sample, "
                    "export.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    prepare.register(sub)
    train_command.register(sub)
    generate.register(sub)
    repl.register(sub)
    serve.register(sub)
    hf.register(sub)
    evaluate.register(sub)
    plot.register(sub)
    bpe.register(sub)
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
    if rest:
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
