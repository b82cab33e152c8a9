"""`gptscratch prepare SOURCE --out DIR`: text in, GPT-2 token shards out, resumable.

The pipeline is one ordered stream: documents (sources.py) go in batches to worker processes that
tokenize them with an `<|endoftext|>` before each; the main process cuts the concatenated token
stream into llm.c shards (shards.py) and records after each shard where in the document stream
the next shard starts. A rerun of a killed `prepare` verifies the shards it finds, skips the
documents they hold and carries on, so the result is byte-identical to an uninterrupted run.
That holds only over the same documents: the state records the source's fingerprint (sources.py), and
a resume over a source that has changed since is refused, as is a rerun of a finished prepare whose
source has changed (the manifest keeps the fingerprint, with the number of documents read); `--overwrite`
prepares it again from the start. A prepare that fails before its first shard leaves nothing it made.

How val is chosen (every source): val is the first `val_tokens` tokens of the document stream,
after the optional `--seed` shuffle, and train is the rest. The cut is at an exact token, so the
document that straddles it is split between the two splits, as build-nanogpt's fineweb.py splits
documents across shards. `--val-tokens` defaults to one full shard for FineWeb-Edu (shard 0 is
val, as in build-nanogpt) and to 10% of all tokens, at most one shard, for every other source.
To know 10% of a total that a stream does not announce, the first ten shards' worth of tokens are
held in memory (or the whole corpus, if smaller) before the first shard is written; pass
`--val-tokens` to skip that.

Shards are numbered in one sequence across splits ({name}_val_000000.bin, {name}_train_000001.bin,
...), each shard `--shard-tokens` tokens except the last of each split.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import multiprocessing
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gptscratch import testing
from gptscratch.data import conversations
from gptscratch.data import shards as fmt
from gptscratch.data.sources import ERROR_MODES, Source, describe_change, open_source, peek
from gptscratch.errors import UserError
from gptscratch.io import atomic_dir, file_sha256, write_json, writing
from gptscratch.paths import DEFAULT_DATA
from gptscratch.tokenizer import (
    ENCODER_JSON_SHA256,
    TOKENIZER_DIR,
    VOCAB_BPE_SHA256,
    Tokenizer,
    trained_or_gpt2,
)

DEFAULT_SHARD_TOKENS = 10**8
VAL_PERCENT = 10
LOOKAHEAD_SHARDS = 100 // VAL_PERCENT  # beyond this many shards, 10% is at least one shard
STATE_FILE = "prepare_state.json"
# A task for a worker: enough text that pickling and IPC vanish next to BPE (~10 ms of work).
BATCH_CHARS = 1 << 16
BATCH_DOCS = 512


@dataclass
class PrepareOptions:
    name: str | None = None  # shard file prefix; default from the source
    shard_tokens: int | None = None  # default 100M
    val_tokens: int | None = None  # default: see the module docstring
    seed: int | None = None  # shuffle document order with this seed
    workers: int | None = None  # tokenizer processes; default all cores
    text_field: str | None = None  # default: text, or messages with --chat
    split_docs_on: str | None = None  # .txt only: separator between documents
    errors: str = "strict"  # undecodable bytes: strict, replace or ignore
    subset: str = "sample-10BT"  # fineweb-edu config
    streaming: bool = False  # stream hub datasets instead of downloading them
    progress: bool = True
    command: str | None = None  # recorded in the manifest
    overwrite: bool = False  # replace an earlier prepare in the directory, finished or not
    chat: bool = False  # conversations (data/conversations.py), not text
    skip_bad: bool = False  # --chat: leave out bad conversations (counted) instead of stopping
    tokenizer: str | None = None  # a directory from `gptscratch tokenizer train`; default GPT-2's BPE


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# --- tokenizing --------------------------------------------------------------------------------


def encode_batch(texts: list[str], tokenizer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of `texts`, each preceded by <|endoftext|>, as one uint16 array, plus each
    document's token count. Empty or whitespace-only texts give no tokens at all (count 0).
    `tokenizer`: a trained tokenizer's directory (a path, which pickles small for the workers), else GPT-2's."""
    tok = trained_or_gpt2(tokenizer)
    ids = [tok.enc.encode_ordinary(t) if t and not t.isspace() else None for t in texts]
    lengths = np.fromiter((0 if x is None else len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    # one pass from the Python lists into a preallocated uint16 array, no intermediate int64 array
    stream = itertools.chain.from_iterable(itertools.chain((tok.eot,), x) for x in ids if x is not None)
    return np.fromiter(stream, dtype=np.uint16, count=int(lengths.sum())), lengths


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for text in documents:
        batch.append(text)
        chars += len(text)
        if chars >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


Encode = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


def _encoded(documents: Iterable[str], workers: int, encode: Encode) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`encode` (encode_batch, or the chat one) over the batched documents, in order, on `workers` processes
    (1: in-process). The tokenizer is loaded before this (prepare does), so forked workers inherit it."""
    if workers == 1:
        yield from map(encode, _batches(documents))
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        yield from pool.imap(encode, _batches(documents), chunksize=1)


# --- writing shards ----------------------------------------------------------------------------


class ShardWriter:
    """Cuts the token stream into shards and records, after each, where the next one starts.

    The resume point is (document index, tokens of that document already written): documents are
    batched arbitrarily, so a shard boundary usually falls inside a document.
    """

    def __init__(self, out: Path, name: str, shard_tokens: int, val_tokens: int | None, state: dict, eot: int):
        self.out, self.name, self.shard_tokens, self.eot = out, name, shard_tokens, eot
        self.state = state
        if "val_tokens" not in state and val_tokens is not None:
            state["val_tokens"] = val_tokens
        self.val_tokens: int | None = state.get("val_tokens")  # None until the 10% rule can be applied
        self.shards: list[dict] = state["shards"]
        self.written = sum(s["tokens"] for s in self.shards)  # stream position of the next shard
        last = self.shards[-1] if self.shards else {"next_doc": 0, "next_skip": 0}
        self.next_doc, self.next_skip = last["next_doc"], last["next_skip"]
        self.docs_seen = self.next_doc  # index of the first document of the next batch
        self.buf: np.ndarray | None = None
        self.fill = 0
        self.lookahead: list[tuple[np.ndarray, np.ndarray, int, int]] = []
        self.lookahead_tokens = 0

    def add(self, tokens: np.ndarray, lengths: np.ndarray, first_offset: int = 0) -> None:
        """Append one batch: `lengths` per document, the first missing its first `first_offset` tokens."""
        first_doc = self.docs_seen
        self.docs_seen += len(lengths)
        if self.val_tokens is None:
            self.lookahead.append((tokens, lengths, first_doc, first_offset))
            self.lookahead_tokens += len(tokens)
            if self.lookahead_tokens >= LOOKAHEAD_SHARDS * self.shard_tokens:
                self._resolve_val(self.shard_tokens)
            return
        self._cut(tokens, lengths, first_doc, first_offset)

    def finish(self, source: str) -> None:
        if self.val_tokens is None:
            # at least one token: a corpus under ten tokens would otherwise get no val split, which train refuses
            self._resolve_val(max(1, min(self.lookahead_tokens * VAL_PERCENT // 100, self.shard_tokens)))
        total = self.written + self.fill
        if total <= self.val_tokens:
            raise UserError(f"{source}: {total} tokens in all; --val-tokens {self.val_tokens} leaves none for train")
        if self.fill:
            self._flush(self.docs_seen, 0)

    def _resolve_val(self, val_tokens: int) -> None:
        self.val_tokens = self.state["val_tokens"] = val_tokens
        pending, self.lookahead = self.lookahead, []
        for batch in pending:
            self._cut(*batch)

    def _capacity(self) -> int:
        if self.written < self.val_tokens:
            return min(self.shard_tokens, self.val_tokens - self.written)
        return self.shard_tokens

    def _cut(self, tokens: np.ndarray, lengths: np.ndarray, first_doc: int, first_offset: int) -> None:
        ends = None
        pos = 0
        while pos < len(tokens):
            capacity = self._capacity()
            if self.buf is None:
                self.buf, self.fill = np.empty(capacity, dtype=np.uint16), 0
            take = min(capacity - self.fill, len(tokens) - pos)
            self.buf[self.fill:self.fill + take] = tokens[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == capacity:
                if ends is None:
                    ends = np.cumsum(lengths)
                # documents wholly before `pos`, then how far into the next one `pos` is
                k = int(np.searchsorted(ends, pos, side="right"))
                offset = pos - (int(ends[k - 1]) if k else 0) + (first_offset if k == 0 else 0)
                self._flush(first_doc + k, offset)

    def _flush(self, next_doc: int, next_skip: int) -> None:
        tokens = self.buf[:self.fill]
        split = "val" if self.written < self.val_tokens else "train"
        filename = fmt.shard_filename(self.name, split, len(self.shards))
        digest = fmt.write_shard(self.out / filename, tokens)
        self.shards.append({
            "file": filename, "split": split, "tokens": len(tokens),
            "documents": int(np.count_nonzero(tokens == self.eot)),  # documents that start here
            "sha256": digest, "next_doc": next_doc, "next_skip": next_skip,
        })
        self.written += len(tokens)
        self.buf, self.fill = None, 0
        self.next_doc, self.next_skip = next_doc, next_skip
        write_json(self.out / STATE_FILE, self.state, indent=1)
        testing.halt("shard", len(self.shards))  # tests kill prepare between shards here


# --- state, manifest ---------------------------------------------------------------------------


def _verified(out: Path, entry: dict) -> bool:
    path = out / entry["file"]
    return path.is_file() and file_sha256(path) == entry["sha256"]


def _changed(source: str, old: dict | None, new: dict) -> str | None:
    """What has changed in `source` since the fingerprint `old` was recorded, in words; None when nothing is
    known to have. A record that cannot settle it is said on stderr, never passed over in silence."""
    if old is None:
        _warn(f"{source}: recorded by an earlier version of gptscratch, without the source's fingerprint, so a "
              "change to the source since cannot be seen (--overwrite prepares it again)")
        return None
    if "revision" in new and not (old.get("revision") and new.get("revision")):
        _warn(f"{source}: its revision on the hub {'is not known now' if old.get('revision') else 'was not known'}"
              " (offline?), so a change to it since cannot be seen (--overwrite prepares it again)")
        return None
    return describe_change(old, new)


def _warn(message: str) -> None:
    print(f"gptscratch prepare: {message}", file=sys.stderr)


def _discard(out: Path, record: dict) -> None:
    """--overwrite: the earlier prepare that `record` (its manifest or state) describes, out of `out`. The manifest
    goes first, so that no reader meets one whose shards are gone; only files this prepare names or numbers."""
    name = record.get("settings", {}).get("name") if isinstance(record.get("settings"), dict) else None
    files = {s["file"] for s in record.get("shards", []) if isinstance(s, dict) and isinstance(s.get("file"), str)}
    if name:
        files |= {p.name for split in ("val", "train") for p in out.glob(f"{name}_{split}_*.bin")}
    with writing(out):
        (out / fmt.MANIFEST).unlink(missing_ok=True)
        for file in files:
            if Path(file).name == file:  # a name inside `out`, whatever a damaged record says
                (out / file).unlink(missing_ok=True)
        if isinstance(record.get("tokenizer"), dict) and "ranks_sha256" in record["tokenizer"]:
            shutil.rmtree(out / TOKENIZER_DIR, ignore_errors=True)  # the copy this prepare made
        (out / STATE_FILE).unlink(missing_ok=True)


def _resume_state(out: Path, settings: dict, name: str, fingerprint: dict, overwrite: bool) -> dict:
    """The state of an unfinished run in `out` with the same settings and source (finished shards verified),
    or a fresh state. Refuses a directory holding someone else's shards, other settings or a source that has
    changed since, unless `overwrite` (not for shards without a state: nothing says they are ours)."""
    path = out / STATE_FILE
    fresh = {"settings": settings, "source": fingerprint, "shards": []}
    if not path.exists():
        foreign = sorted(p.name for p in out.glob(f"{name}_*.bin"))
        if foreign:
            raise UserError(f"{out}: already holds shards ({foreign[0]}, ...) without a manifest; "
                            "choose another --out or remove them")
        write_json(path, fresh, indent=1)  # marks the directory as ours before any shard appears
        return fresh
    try:
        state = json.loads(path.read_text())
        old = state["settings"]
    except (ValueError, KeyError, TypeError) as e:
        if not overwrite:
            raise UserError(f"{path}: unreadable resume record ({e}); delete {out} and start again, or pass "
                            "--overwrite") from e
        state, old = {"settings": {"name": name}}, None
    if overwrite:
        _discard(out, state)
    if overwrite or not state.get("shards"):  # nothing to keep: a run that failed before its first shard
        write_json(path, fresh, indent=1)
        return fresh
    if old != settings:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
        raise UserError(f"{out}: holds an unfinished prepare with other settings ({diff}); rerun it with the same "
                        "options, choose another --out, or pass --overwrite to start again")
    change = _changed(settings["source"], state.get("source"), fingerprint)
    if change is not None:
        raise UserError(f"{out}: holds an unfinished prepare of {settings['source']}, which has changed since it "
                        f"began ({change}); resuming would mix old and new documents: pass --overwrite to start again")
    good = list(itertools.takewhile(lambda s: _verified(out, s), state["shards"]))
    state["shards"] = good
    state.setdefault("source", fingerprint)  # a state from before fingerprints: the source as it is now
    if not good:
        state.pop("val_tokens", None)  # resolved from the data again
    write_json(path, state, indent=1)
    return state


@contextlib.contextmanager
def _tidied_on_failure(out: Path, made: list[Path]) -> Iterator[None]:
    """On any failure (an interrupt included) that leaves no finished shard to resume from, remove the state file
    and the directories this run made (`made`, deepest first): a failed prepare leaves nothing of its own."""
    try:
        yield
    except BaseException:
        state = out / STATE_FILE
        try:
            keep = bool(json.loads(state.read_text()).get("shards"))
        except FileNotFoundError:
            keep = False
        except (OSError, ValueError, AttributeError):
            keep = True  # a record that cannot be read is not this run's to judge
        if not keep:
            state.unlink(missing_ok=True)
            for directory in made:
                try:
                    directory.rmdir()
                except OSError:  # not empty (someone else's files), or not ours to remove
                    break
        raise


def _manifest(source: Source, settings: dict, state: dict, command: str, documents: int, tok: Tokenizer) -> dict:
    shards = [{k: s[k] for k in ("file", "split", "tokens", "documents", "sha256")} for s in state["shards"]]
    splits = {}
    for split in ("val", "train"):
        mine = [s for s in shards if s["split"] == split]
        splits[split] = {"tokens": sum(s["tokens"] for s in mine), "documents": sum(s["documents"] for s in mine),
                         "shards": len(mine)}
    return {
        "format": {"magic": fmt.MAGIC, "version": fmt.VERSION, "header_int32s": fmt.HEADER_INTS, "dtype": "uint16"},
        "name": settings["name"],
        # what the shards came from, with the number of documents (empty ones included) it yielded
        "source": {"spec": source.spec, **source.info, "fingerprint": {**state["source"], "documents": documents}},
        "tokenizer": tok.record() if tok.sha256 else {
            **tok.record(), "vocab_bpe_sha256": VOCAB_BPE_SHA256, "encoder_json_sha256": ENCODER_JSON_SHA256},
        "settings": settings,
        "val_tokens": state["val_tokens"],
        "split_rule": "val = the first val_tokens tokens of the (shuffled if seed) document stream, train = the rest",
        "tokens": sum(s["tokens"] for s in shards),
        "documents": sum(s["documents"] for s in shards),
        "splits": splits,
        "shards": shards,
        "command": command,
    }


# --- the pipeline ------------------------------------------------------------------------------


def prepare(source: str, out_dir: str | os.PathLike, **options: Any) -> dict:
    """Tokenize `source` into llm.c shards plus manifest.json in `out_dir`; return the manifest.

    `options` are PrepareOptions' fields. Rerunning after an interruption resumes; rerunning after
    success checks the shards and returns the existing manifest.
    """
    opts = PrepareOptions(**options)
    # checked as given, before the source opens (it may download): 0 is refused, not taken for the default
    if opts.shard_tokens is not None and not 1 <= opts.shard_tokens <= fmt.MAX_SHARD_TOKENS:
        raise UserError(f"--shard-tokens {opts.shard_tokens}: expected 1 to {fmt.MAX_SHARD_TOKENS}")
    if opts.val_tokens is not None and opts.val_tokens < 1:
        raise UserError(f"--val-tokens {opts.val_tokens}: expected at least 1 (train needs a val split to "
                        "measure val loss)")
    if opts.workers is not None and opts.workers < 1:
        raise UserError(f"--workers {opts.workers}: expected at least 1")
    if opts.skip_bad and not opts.chat:
        raise UserError("--skip-bad: only with --chat (it leaves out bad conversations)")
    text_field = opts.text_field or (conversations.DEFAULT_FIELD if opts.chat else "text")
    tok = trained_or_gpt2(opts.tokenizer, opts.chat)  # a bad --tokenizer fails here, before the source opens
    tok_dir = str(tok.path) if tok.path else None
    encode: Encode = functools.partial(encode_batch, tokenizer=tok_dir)
    if opts.chat:
        src = conversations.open_conversations(source, field=text_field, errors=opts.errors,
                                               streaming=opts.streaming, seed=opts.seed)
        encode = functools.partial(conversations.encode_conversations, field=text_field, skip_bad=opts.skip_bad,
                                   tokenizer=tok_dir)
    else:
        src = open_source(source, text_field=text_field, split_docs_on=opts.split_docs_on, errors=opts.errors,
                          subset=opts.subset, streaming=opts.streaming, seed=opts.seed)
    shard_tokens = opts.shard_tokens or src.default_shard_tokens or DEFAULT_SHARD_TOKENS
    val_tokens = opts.val_tokens
    if val_tokens is None and src.val_is_first_shard:
        val_tokens = shard_tokens
    workers = opts.workers or default_workers()
    name = fmt.safe_name(opts.name) if opts.name else src.name
    # everything that changes the bytes of the shards; a resumed run must match it exactly
    settings = {"source": source, "name": name, "shard_tokens": shard_tokens, "val_tokens": val_tokens,
                "seed": opts.seed, "text_field": text_field, "split_docs_on": opts.split_docs_on,
                "errors": opts.errors, "subset": opts.subset if source == "fineweb-edu" else None,
                "streaming": opts.streaming, "vocab_bpe_sha256": VOCAB_BPE_SHA256}
    if opts.chat:  # only then: a text corpus prepared before --chat existed keeps its settings
        settings.update(chat=True, skip_bad=opts.skip_bad)
    if tok.sha256:  # likewise: GPT-2's corpora prepared before --tokenizer keep theirs
        settings["tokenizer_sha256"] = tok.sha256
    command = opts.command or f"prepare({source!r}, {str(out_dir)!r}, **{_given(opts)!r})"

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    fingerprint = src.fingerprint()
    done = _finished_manifest(out, settings, fingerprint, opts.overwrite)
    if done is not None:
        return done
    made = [p for p in (out, *out.parents) if not p.exists()]
    with writing(out):  # a parent that is a file, a read-only disk: one line (so is any write after this)
        out.mkdir(parents=True, exist_ok=True)
    with _tidied_on_failure(out, made):
        # half-written files of a killed run (only ours: --out may be shared with other data)
        for pattern in (f"{name}_*.bin.*tmp", f"{STATE_FILE}.*tmp", f"{fmt.MANIFEST}.*tmp"):
            for leftover in out.glob(pattern):
                leftover.unlink(missing_ok=True)
        state = _resume_state(out, settings, name, fingerprint, opts.overwrite)
        writer = ShardWriter(out, name, shard_tokens, val_tokens, state, tok.eot)

        documents = src.documents(writer.next_doc)
        if writer.next_doc == 0:
            first, documents = peek(documents)
            if first is None:
                raise UserError(f"{source}: no documents (all are empty or whitespace)")
        _run(writer, documents, workers, src, opts.progress, encode)
        if opts.chat and not writer.written + writer.fill + writer.lookahead_tokens:
            raise UserError(f"{source}: no valid conversations ({writer.docs_seen} bad rows skipped)")
        writer.finish(source)
        change = describe_change(fingerprint, src.fingerprint())
        if change is not None:  # the shards stay, and so does the state that refuses to resume over them
            raise UserError(f"{source}: changed while it was being prepared ({change}); pass --overwrite to "
                            "prepare it again")

    manifest = _manifest(src, settings, state, command, writer.docs_seen, tok)
    if opts.chat:
        manifest["chat"] = conversations.chat_manifest(writer.docs_seen, manifest["documents"], tok)
    if tok.path is not None:  # the data carries its tokenizer: train reads the model's vocabulary from it
        with atomic_dir(out / TOKENIZER_DIR) as tmp:
            tok.copy_files(tmp)
    write_json(out / fmt.MANIFEST, manifest, indent=1)
    (out / STATE_FILE).unlink()
    return manifest


def _run(writer: ShardWriter, documents: Iterable[str], workers: int, src: Source, progress: bool,
         encode: Encode = encode_batch) -> None:
    skip = writer.next_skip  # tokens of the first document already in finished shards
    docs = sum(s["documents"] for s in writer.shards)
    bar = tqdm(total=src.approx_tokens, initial=writer.written, unit="tok", unit_scale=True, smoothing=0.1,
               desc=f"prepare {writer.name}", disable=not progress, dynamic_ncols=True)
    last_postfix = 0.0
    encoded = _encoded(documents, workers, encode)
    with bar, contextlib.closing(encoded):  # on any error, stop the worker pool now
        for tokens, lengths in encoded:
            if skip:
                tokens, lengths = tokens[skip:], lengths.copy()
                lengths[0] -= skip
            writer.add(tokens, lengths, first_offset=skip)
            docs += int(np.count_nonzero(lengths)) - (1 if skip else 0)  # a resumed document was counted
            skip = 0
            bar.update(len(tokens))
            if time.monotonic() - last_postfix > 0.5:
                bar.set_postfix(docs=f"{docs:,}", shards=len(writer.shards), refresh=False)
                last_postfix = time.monotonic()
        bar.set_postfix(docs=f"{docs:,}", shards=len(writer.shards))


def _finished_manifest(out: Path, settings: dict, fingerprint: dict, overwrite: bool) -> dict | None:
    """The manifest of a finished prepare in `out` of the same settings and the same source, its shards verified;
    None when there is none, or `overwrite` has removed it. Other settings or a changed source are refused."""
    path = out / fmt.MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        old = manifest["settings"]
        recorded = manifest["source"].get("fingerprint")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a gptscratch manifest ({e}); choose another --out") from e
    if overwrite:
        _discard(out, manifest)
        return None
    if old != settings:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
        raise UserError(f"{out}: already prepared with other settings ({diff}); choose another --out, or pass "
                        "--overwrite to replace it")
    change = _changed(settings["source"], recorded, fingerprint)
    if change is not None:
        raise UserError(f"{out}: was prepared from {settings['source']}, which has changed since ({change}); pass "
                        "--overwrite to prepare it again")
    for entry in manifest["shards"]:
        if not _verified(out, entry):
            raise UserError(f"{out / entry['file']}: missing or changed since prepare (sha256 mismatch); "
                            f"delete {out} and prepare again")
    return manifest


def _given(opts: PrepareOptions) -> dict:
    defaults = asdict(PrepareOptions())
    return {k: v for k, v in asdict(opts).items()
            if v != defaults[k] and k not in ("command", "progress", "overwrite")}


def ensure_shakespeare(out_dir: str | os.PathLike = DEFAULT_DATA, **options: Any) -> Path:
    """`out_dir`, with the default Shakespeare corpus prepared into it unless manifest.json is there."""
    out = Path(out_dir)
    if not (out / fmt.MANIFEST).exists():
        prepare("shakespeare", out, command=options.pop("command", "ensure_shakespeare()"), **options)
    return out


# --- CLI ---------------------------------------------------------------------------------------

_COUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kKmMbBgG]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str) -> int:
    """A token count: 100000000, 1e8, 100M, 1.5B."""
    match = _COUNT_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (examples: 1000000, 1e6, 100M, 1.5B)")
    return round(float(match.group(1)) * _SCALE[match.group(2).lower()])


def _unescape(text: str) -> str:
    """Backslash escapes a shell makes awkward: \\n, \\t, \\r and \\\\."""
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def cmd_prepare(args: argparse.Namespace) -> int:
    parts = ["gptscratch", "prepare", args.source, "--out", args.out]
    for flag in ("name", "shard_tokens", "val_tokens", "seed", "workers", "text_field", "split_docs_on", "errors",
                 "subset", "tokenizer"):
        value = getattr(args, flag)
        if value is not None and value != PrepareOptions.__dataclass_fields__[flag].default:
            parts += ["--" + flag.replace("_", "-"), str(value)]
    if args.streaming:
        parts.append("--streaming")
    parts += [flag for flag, on in (("--chat", args.chat), ("--skip-bad", args.skip_bad)) if on]
    manifest = prepare(
        args.source, args.out, name=args.name, shard_tokens=args.shard_tokens, val_tokens=args.val_tokens,
        seed=args.seed, workers=args.workers, text_field=args.text_field,
        split_docs_on=_unescape(args.split_docs_on) if args.split_docs_on is not None else None,
        errors=args.errors, subset=args.subset, streaming=args.streaming, progress=not args.quiet,
        command=shlex.join(parts), overwrite=args.overwrite, chat=args.chat, skip_bad=args.skip_bad,
        tokenizer=args.tokenizer,
    )
    val, train = manifest["splits"]["val"], manifest["splits"]["train"]
    documents = f"{manifest['documents']:,} documents"
    if "chat" in manifest:
        documents = f"{manifest['documents']:,} conversations ({manifest['chat']['skipped']:,} bad rows skipped)"
    print(f"{args.out}: train {train['tokens']:,} tokens in {train['shards']} shard(s), "
          f"val {val['tokens']:,} tokens in {val['shards']} shard(s), {documents}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "prepare", help="tokenize a corpus into token shards (llm.c .bin format)",
        description="Tokenize SOURCE with GPT-2's BPE (or --tokenizer DIR) into llm.c-format shards plus "
                    "manifest.json. "
                    "Interrupt it any time: rerunning the same command resumes, unless the source has changed "
                    "since (then --overwrite starts again). "
                    "Val is the first --val-tokens tokens of the document stream, train the rest.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="shakespeare | fineweb-edu | hf:owner/name[:config] | a .txt/.jsonl/.jsonl.gz/.parquet/.csv "
                        "file, directory or glob")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--name", help="shard file prefix (default: from the source)")
    p.add_argument("--shard-tokens", type=parse_count, metavar="N", help="tokens per shard (default 100M)")
    p.add_argument("--val-tokens", type=parse_count, metavar="N",
                   help="tokens of val (default: 10%% of all, at most one shard; fineweb-edu: one shard)")
    p.add_argument("--seed", type=int, help="shuffle document order with this seed (default: keep order)")
    p.add_argument("--workers", type=int, metavar="N", help=f"tokenizer processes (default: all {default_workers()})")
    p.add_argument("--text-field", metavar="NAME",
                   help="field holding the text (default text), or the conversation with --chat (default messages)")
    p.add_argument("--split-docs-on", metavar="SEP",
                   help="for .txt files: split documents on SEP (\\n escapes understood; default one per file)")
    p.add_argument("--errors", default="strict", choices=ERROR_MODES,
                   help="bytes that are not UTF-8: strict (stop, default), replace (U+FFFD) or ignore")
    p.add_argument("--subset", default="sample-10BT", help="fineweb-edu config: sample-10BT (default), sample-100BT")
    p.add_argument("--streaming", action="store_true", help="stream hub datasets instead of downloading them")
    p.add_argument("--overwrite", action="store_true", help="prepare again from the start, replacing an earlier "
                   "prepare in --out (finished or not, its source changed or not): its manifest and shards only")
    p.add_argument("--chat", action="store_true",
                   help="SOURCE holds conversations, OpenAI messages lists ({\"messages\": [{\"role\": \"user\", "
                        "\"content\": ...}, ...]} per .jsonl line, or a messages column of .parquet files or an hf: "
                        "dataset): shards of the chat format, to train with --preset sft")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="tokenize with this tokenizer (a directory from `gptscratch tokenizer train`, at most "
                        "65,536 ids) instead of GPT-2's; the data keeps a copy, which models trained on it use")
    p.add_argument("--skip-bad", action="store_true",
                   help="with --chat: leave out bad conversations and count them, instead of stopping at the first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
