"""`gptscratch prepare CORPUS --chat`: conversations in, chat token shards out.

A conversation is OpenAI's `messages` list: one `{"messages": [{"role": ..., "content": ...}, ...]}` object
per line of a .jsonl(.gz) file, a `messages` column of a .parquet file, or of a Hugging Face dataset
(`hf:owner/name[:config]`, smol-smoltalk's layout); `--text-field` names another field. Each becomes the
ids of `chat.encode_conversation`, `<|endoftext|>` first, so the rest is `prepare`'s pipeline unchanged:
resumable, on worker processes, into llm.c shards. The shards hold ids only: which of them the assistant
writes follows from the chat tokens (`chat.assistant_mask`), so there is no second file to keep in step.

A source's rows reach the workers as JSON text naming where each came from (`file:line`, `file row N`), and
the workers parse and check them: a bad row (not JSON, no messages field, an unknown role, empty content,
turns that do not alternate) stops `prepare` with one line naming it, or, with `--skip-bad`, adds no tokens
and is counted.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gptscratch.chat import ChatFormatError, encode_conversation
from gptscratch.data.shards import safe_name
from gptscratch.data.sources import (
    Source,
    _open_text,
    _reading,
    _shuffled,
    _suffix,
    files_fingerprint,
    hub_revision,
    load_hf_dataset,
    local_files,
    parquet_column,
)
from gptscratch.errors import UserError
from gptscratch.tokenizer import SPECIAL_TOKENS, Tokenizer, trained_or_gpt2

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
DEFAULT_FIELD = "messages"


def encode_conversations(rows: list[str], field: str, skip_bad: bool,
                         tokenizer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """prepare's `encode_batch` for conversations: the ids of every row (each opening with <|endoftext|>) as one
    uint16 array, and each row's count, 0 for a bad row skipped. `tokenizer`: a trained tokenizer's directory,
    else GPT-2's with the chat tokens."""
    tok = trained_or_gpt2(tokenizer, chat=True)
    chunks, lengths = [], []
    for row in rows:
        where, messages = _unpack(row, field)
        try:
            if isinstance(messages, ChatFormatError):
                raise messages
            ids, _ = encode_conversation(messages, tok)
        except ChatFormatError as e:
            if not skip_bad:
                raise UserError(f"{where}: {e} (or pass --skip-bad to leave such rows out)") from None
            ids = []
        chunks.append(ids)
        lengths.append(len(ids))
    stream = itertools.chain.from_iterable(chunks)
    return np.fromiter(stream, dtype=np.uint16, count=sum(lengths)), np.array(lengths, dtype=np.int64)


def _unpack(row: str, field: str) -> tuple[str, Any]:
    """(where, the messages) of a row as the source wrote it; a jsonl line is parsed here, on a worker."""
    record = json.loads(row)
    where = record["at"]
    if "messages" in record:
        return where, record["messages"]
    try:
        value = json.loads(record["line"])
    except ValueError as e:
        return where, ChatFormatError(f"not valid JSON ({e})")
    if not isinstance(value, dict) or field not in value:
        fields = ", ".join(value) if isinstance(value, dict) else type(value).__name__
        return where, ChatFormatError(f"no field {field!r} (fields: {fields}); choose one with --text-field")
    return where, value[field]


def chat_manifest(rows: int, conversations: int, tok: Tokenizer) -> dict:
    """What a chat corpus's manifest adds: its chat tokens and vocabulary, and how many rows it kept and skipped."""
    tokens = {name: tok.enc.encode_single_token(name) for name in SPECIAL_TOKENS[1:]}
    return {"tokens": tokens, "vocab_size": tok.vocab_size, "conversations": conversations,
            "skipped": rows - conversations,
            "mask": "ids only: the assistant's tokens are those after <|assistant_start|> up to and including "
                    "<|assistant_end|> (gptscratch.chat.assistant_mask)"}


# --- sources -----------------------------------------------------------------------------------


def _jsonl_rows(path: Path, errors: str) -> Iterator[str]:
    with _reading(path, errors), _open_text(path, errors) as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield json.dumps({"at": f"{path}:{lineno}", "line": line})


def _parquet_rows(path: Path, field: str) -> Iterator[str]:
    for index, messages in enumerate(parquet_column(path, field)):
        yield json.dumps({"at": f"{path} row {index}", "messages": messages})


def _local(spec: str, field: str, errors: str, seed: int | None) -> Source:
    paths = local_files(spec)
    for p in paths:
        if _suffix(p) not in SUFFIXES:
            raise UserError(f"{p}: --chat reads conversations from {', '.join(SUFFIXES)} files, not {_suffix(p)}")

    def all_rows() -> Iterator[str]:
        return itertools.chain.from_iterable(
            _parquet_rows(p, field) if _suffix(p) == ".parquet" else _jsonl_rows(p, errors) for p in paths)

    def documents(start: int) -> Iterator[str]:
        if seed is not None:
            return iter(_shuffled(list(all_rows()), seed)[start:])
        return itertools.islice(all_rows(), start, None)

    base = Path(spec.split("*")[0].split("?")[0].split("[")[0])
    name = safe_name(base.name.removesuffix(_suffix(base) or "") if base.name else base.resolve().name)
    shown = [str(p) for p in paths]
    return Source(spec, name, {"kind": "files", "files": shown if len(shown) <= 1000 else f"{len(shown)} files"},
                  documents, lambda: files_fingerprint(paths))


def _hub(spec: str, field: str, streaming: bool, seed: int | None) -> Source:
    repo, _, config = spec[len("hf:"):].partition(":")
    if repo.count("/") > 1 or not repo.strip("/"):
        raise UserError(f"{spec}: expected hf:owner/name[:config]")

    def documents(start: int) -> Iterator[str]:
        ds = load_hf_dataset(repo, config or None, streaming, spec)
        columns = getattr(ds, "column_names", None)
        if columns is not None and field not in columns:
            raise UserError(f"{spec}: no column {field!r} (columns: {', '.join(columns)}); choose one with "
                            "--text-field")
        if columns is not None:
            ds = ds.select_columns([field])
        if seed is not None:  # map-style: an exact permutation; streaming: datasets' seeded buffer shuffle
            ds = ds.shuffle(seed=seed, buffer_size=10_000) if not hasattr(ds, "__len__") else ds.shuffle(seed=seed)
        if start:
            ds = ds.skip(start)
        order = " of the --seed order" if seed is not None else ""
        index = start
        for batch in ds.iter(batch_size=1000):
            if field not in batch:
                raise UserError(f"{spec}: no column {field!r} (columns: {', '.join(batch)}); choose one with "
                                "--text-field")
            for messages in batch[field]:
                yield json.dumps({"at": f"{spec} row {index}{order}", "messages": messages})
                index += 1

    info = {"kind": "hf", "dataset": repo, "config": config or None, "streaming": streaming}
    return Source(spec, safe_name(repo.split("/")[-1]), info, documents,
                  lambda: {"dataset": repo, "config": config or None, "revision": hub_revision(repo)})


def open_conversations(spec: str, *, field: str = DEFAULT_FIELD, errors: str = "strict", streaming: bool = False,
                       seed: int | None = None) -> Source:
    """The conversations `spec` names, each row as JSON text for `encode_conversations`."""
    if not spec or not spec.strip():
        raise UserError("SOURCE is empty; expected conversations: .jsonl/.jsonl.gz/.parquet files or hf:owner/name")
    if spec in ("shakespeare", "fineweb-edu"):
        raise UserError(f"--chat: {spec} is a text corpus; expected conversations (.jsonl/.jsonl.gz/.parquet files "
                        "with a messages field, or hf:owner/name)")
    if spec.startswith("hf:"):
        return _hub(spec, field, streaming, seed)
    return _local(spec, field, errors, seed)
