"""Your own byte-level BPE: `tokenizer train` learns one from a corpus, `tokenizer eval` weighs it against GPT-2's.

Training runs on `rustbpe` (the `[tokenizer]` extra), a Rust trainer that hands back the merges as tiktoken's
mergeable ranks, so the result is a `tiktoken.Encoding` with no translation step (the `tokenizers` library's
vocabulary is spelled in its byte-to-unicode alphabet and would need one). Every one of the 256 bytes is a
token, so any string round-trips exactly.

A tokenizer directory holds two files: `ranks.tiktoken`, tiktoken's own format (a base64 token and its rank per
line, what `tiktoken.load.load_tiktoken_bpe` reads), and `manifest.json` with the split pattern, the special
tokens and their ids, and the ranks file's sha256, which every load checks (tokenizer.py loads it, for every
command). The special tokens take the ids right after the merges and are never learned: the text they are cut
out of is trained as separate pieces. Use it end to end with `gptscratch prepare CORPUS --tokenizer DIR`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from gptscratch.data.sources import open_source
from gptscratch.errors import UserError
from gptscratch.io import atomic_dir, write_json
from gptscratch.tokenizer import (
    GPT2_PATTERN,
    MANIFEST,
    MAX_VOCAB,
    RANKS_FILE,
    SPECIAL_TOKENS,
    encoding,
    get_encoding,
    load_trained,
)

# GPT-4's split pattern with digits in groups of one or two, as nanochat trains it: a small vocabulary
# spends fewer ids on numbers than with GPT-4's groups of three.
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte, then the special tokens
FORMAT = 1
INSTALL_HINT = "pip install 'gptscratch[tokenizer]'"


# --- training ------------------------------------------------------------------------------------


def check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise UserError(f"--vocab-size {vocab_size}: expected {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} "
                        f"special tokens) to {MAX_VOCAB:,} (ids stored as uint16)")


def training_texts(documents: Iterator[str], max_chars: int, doc_cap: int | None, read: list[int],
                   progress: Any) -> Iterator[str]:
    """The pieces of text the trainer sees: each document cut to `doc_cap` characters and split around the
    special tokens (so no merge ever learns one), until `max_chars` characters have been read (counted in
    `read[0]`: a disabled progress bar counts nothing)."""
    splitter = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))
    for doc in documents:
        if read[0] >= max_chars:
            return
        doc = doc[:min(doc_cap or len(doc), max_chars - read[0])]
        read[0] += len(doc)
        progress.update(len(doc))
        yield from (piece for piece in splitter.split(doc) if piece)


def train(spec: str, vocab_size: int, pattern: str = "gpt4", max_chars: int = 10**10,
          doc_cap: int | None = None, name: str = "bpe", progress: bool = True,
          **source_kwargs: Any) -> tuple[tiktoken.Encoding, dict]:
    """A tokenizer of exactly `vocab_size` ids learned from the corpus `spec` names, and its manifest
    (without the ranks file's hash, which `save` adds)."""
    from tqdm import tqdm

    check_vocab_size(vocab_size)
    if max_chars < 1:
        raise UserError(f"--max-chars {max_chars}: expected a positive number of characters")
    if doc_cap is not None and doc_cap < 1:
        raise UserError(f"--doc-cap {doc_cap}: expected a positive number of characters")
    try:
        import rustbpe
    except ImportError:
        raise UserError(f"tokenizer training needs the `rustbpe` package ({INSTALL_HINT})") from None
    source = open_source(spec, **source_kwargs)
    n_merged = vocab_size - len(SPECIAL_TOKENS)
    trainer = rustbpe.Tokenizer()
    read = [0]
    with tqdm(desc=f"reading {spec}", unit="char", unit_scale=True, disable=not progress) as bar:
        texts = training_texts(source.documents(0), max_chars, doc_cap, read, bar)
        trainer.train_from_iterator(texts, n_merged, pattern=PATTERNS[pattern])
    chars = read[0]
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    if chars == 0:
        raise UserError(f"{spec}: no text to learn from; expected a corpus with some non-empty documents")
    if len(ranks) < n_merged:
        raise UserError(f"{spec}: {chars:,} characters hold only {len(ranks) - 256:,} merges, not the "
                        f"{n_merged - 256:,} --vocab-size {vocab_size} needs; give more text or a smaller "
                        "--vocab-size")
    special = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
    manifest = {"format": FORMAT, "name": name, "vocab_size": vocab_size,
                "pattern_name": pattern, "pattern": PATTERNS[pattern], "special_tokens": special,
                "ranks_file": RANKS_FILE, "trainer": f"rustbpe {importlib.metadata.version('rustbpe')}",
                "source": {"spec": spec, **source.info}, "chars": chars, "max_chars": max_chars, "doc_cap": doc_cap}
    return encoding(manifest, ranks), manifest


def ranks_bytes(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's file format for mergeable ranks, in rank order."""
    return b"".join(base64.b64encode(token) + b" %d\n" % rank
                    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def save(enc: tiktoken.Encoding, manifest: dict, out: Path) -> dict:
    """Write the tokenizer directory `out` whole or not at all; the manifest as written."""
    if out.exists() and (not out.is_dir() or any(out.iterdir()) and not (out / MANIFEST).exists()):
        raise UserError(f"--out {out}: holds other files; expected a new directory or a tokenizer directory")
    data = ranks_bytes(enc._mergeable_ranks)
    manifest = {**manifest, "ranks_sha256": hashlib.sha256(data).hexdigest()}
    with atomic_dir(out) as tmp:
        (tmp / RANKS_FILE).write_bytes(data)
        write_json(tmp / MANIFEST, manifest)
    return manifest


# --- loading ---------------------------------------------------------------------------------------


def load(path: str | Path) -> tiktoken.Encoding:
    """The tokenizer saved in directory `path`, its ranks checked against the manifest's sha256."""
    return load_trained(path).enc


# --- evaluation ----------------------------------------------------------------------------------


@dataclass
class Score:
    name: str
    vocab_size: int
    bytes: int
    tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens


def held_out_texts(spec: str, max_chars: int, **source_kwargs: Any) -> list[str]:
    texts, seen = [], 0
    for doc in open_source(spec, **source_kwargs).documents(0):
        if seen >= max_chars:
            break
        texts.append(doc[:max_chars - seen])
        seen += len(texts[-1])
    if not any(t.strip() for t in texts):
        raise UserError(f"--data {spec}: no text; expected a corpus with some non-empty documents")
    return texts


def score(name: str, enc: tiktoken.Encoding, texts: list[str]) -> Score:
    # as ordinary text: a special token's spelling inside held-out text is text, as it was in training
    tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(texts))
    return Score(name, enc.n_vocab, sum(len(t.encode("utf-8")) for t in texts), tokens)


def evaluate(dirs: list[str], spec: str, max_chars: int = 10**7, progress: bool = True,
             **source_kwargs: Any) -> list[Score]:
    """Bytes per token of GPT-2's tokenizer, then of each trained one, on the same text."""
    from tqdm import tqdm

    if max_chars < 1:
        raise UserError(f"--max-chars {max_chars}: expected a positive number of characters")
    encodings = [("gpt2", get_encoding())] + [(d, load(d)) for d in dirs]  # every directory checked before work
    texts = held_out_texts(spec, max_chars, **source_kwargs)
    return [score(name, enc, texts) for name, enc in tqdm(encodings, desc="encoding", disable=not progress)]


def table(scores: list[Score]) -> str:
    base = scores[0].bytes_per_token
    width = max(len(s.name) for s in scores)
    rows = [f"{'tokenizer':<{width}}  {'vocab':>7}  {'tokens':>12}  {'bytes/token':>11}  {'vs gpt2':>7}"]
    rows += [f"{s.name:<{width}}  {s.vocab_size:>7,}  {s.tokens:>12,}  {s.bytes_per_token:>11.3f}  "
             f"{s.bytes_per_token / base:>6.3f}x" for s in scores]
    return "\n".join(rows)


# --- the command ---------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    enc, manifest = train(args.corpus, args.vocab_size, args.pattern, args.max_chars, args.doc_cap,
                          name=Path(args.out).name, progress=not args.quiet, text_field=args.text_field)
    manifest = save(enc, manifest, Path(args.out))
    print(f"wrote {args.out}: {manifest['vocab_size']:,} ids ({len(SPECIAL_TOKENS)} special) from "
          f"{manifest['chars']:,} characters", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    scores = evaluate(args.dirs, args.data, args.max_chars, progress=not args.quiet, text_field=args.text_field)
    if args.json:
        print(json.dumps([{"tokenizer": s.name, "vocab_size": s.vocab_size, "bytes": s.bytes, "tokens": s.tokens,
                           "bytes_per_token": s.bytes_per_token} for s in scores], indent=2))
    else:
        print(table(scores))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a corpus; compare it with GPT-2's",
                            description="Train a byte-level BPE tokenizer, or weigh trained ones against GPT-2's.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="learn a tokenizer from a corpus",
                           description="Learn a byte-level BPE from CORPUS (any corpus prepare accepts) and save it "
                           "as a tiktoken encoding with its manifest.")
    t.add_argument("corpus", metavar="CORPUS", help="shakespeare, fineweb-edu, hf:owner/name[:config], or files")
    t.add_argument("--vocab-size", type=int, required=True,
                   help=f"ids in all, the {len(SPECIAL_TOKENS)} special tokens included ({MIN_VOCAB}-{MAX_VOCAB})")
    t.add_argument("--out", required=True, help="the tokenizer directory to write")
    t.add_argument("--max-chars", type=int, default=10**10, help="characters to read from the corpus at most")
    t.add_argument("--doc-cap", type=int, default=None,
                   help="characters of each document to read at most (default: all; a single .txt file is one "
                   "document)")
    t.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4",
                   help="the split pattern: GPT-2's, or GPT-4's with digits in pairs")
    t.add_argument("--text-field", default="text", help="the field of a jsonl/csv/parquet/dataset row to read")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)
    e = actions.add_parser("eval", help="bytes per token of trained tokenizers beside GPT-2's",
                           description="Bytes per token of each tokenizer directory and of GPT-2's on held-out text.")
    e.add_argument("dirs", metavar="DIR", nargs="+", help="tokenizer directories written by `tokenizer train`")
    e.add_argument("--data", required=True, help="the held-out text: any corpus prepare accepts")
    e.add_argument("--max-chars", type=int, default=10**7, help="characters of --data to encode at most")
    e.add_argument("--text-field", default="text", help="the field of a jsonl/csv/parquet/dataset row to read")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=run_eval)
