"""Token shards in llm.c's `.bin` format: read, write, validate.

A shard is a 1024-byte header of 256 little-endian int32 (magic 20240520, version 1, token count,
the rest zero) followed by the tokens as little-endian uint16. This is the format of llm.c's
`dev/data/*.py` and of the pre-tokenized FineWeb shards that modded-nanogpt publishes, so shards
move freely between those projects and this one.

Files are named `{name}_{split}_{index:06d}.bin` with one index sequence over all splits (shard 0 is
usually val), as llm.c and build-nanogpt do; a loader finds a split by the `_{split}_` in the name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptscratch.errors import UserError
from gptscratch.io import atomic_path, file_sha256
from gptscratch.tokenizer import MAX_VOCAB, VOCAB_SIZE, Tokenizer, tokenizer_of

MAGIC = 20240520
VERSION = 1  # llm.c's version 2 is LLaMA-3's uint32 tokens; GPT-2 ids fit uint16
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
HEADER_DTYPE = np.dtype("<i4")
TOKEN_DTYPE = np.dtype("<u2")
MAX_SHARD_TOKENS = 2**31 - 1  # the count is an int32
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    tokens: int
    sha256: str | None = None  # from the manifest; checked when a loader first opens the shard


def shard_filename(name: str, split: str, index: int) -> str:
    return f"{name}_{split}_{index:06d}.bin"


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> str:
    """Write `tokens` as an llm.c shard at `path`, atomically; return the file's sha256.

    The bytes go to a temporary name first and are renamed only once complete and synced, so a killed
    writer never leaves a truncated file under a shard's real name.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) > MAX_SHARD_TOKENS:
        raise ValueError(f"a shard holds a 1-D array of at most {MAX_SHARD_TOKENS} tokens")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= MAX_VOCAB):
        raise ValueError(f"token ids must lie in [0, {MAX_VOCAB}): what uint16 holds")
    header = np.zeros(HEADER_INTS, dtype=HEADER_DTYPE)
    header[0], header[1], header[2] = MAGIC, VERSION, len(tokens)
    body = tokens.astype(TOKEN_DTYPE, copy=False).tobytes()
    digest = hashlib.sha256()
    digest.update(header.tobytes())
    digest.update(body)
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(body)
    return digest.hexdigest()


def read_header(path: str | os.PathLike) -> int:
    """The token count of the shard at `path`, after checking magic, version and file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise UserError(f"{path}: cannot read shard ({e.strerror or e})") from e
    if len(raw) < HEADER_BYTES:
        raise UserError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte llm.c shard header")
    header = np.frombuffer(raw, dtype=HEADER_DTYPE)
    magic, version, count = (int(v) for v in header[:3])
    if magic != MAGIC:
        raise UserError(f"{path}: bad magic {magic}; expected an llm.c token shard (magic {MAGIC})")
    if version != VERSION:
        raise UserError(f"{path}: shard version {version}; expected version {VERSION} (GPT-2 uint16 tokens)")
    expected = HEADER_BYTES + count * TOKEN_DTYPE.itemsize
    if count < 0 or size != expected:
        raise UserError(f"{path}: header says {count} tokens ({expected} bytes) but the file has {size} bytes")
    return count


def open_shard(path: str | os.PathLike, check_vocab: bool = True, sha256: str | None = None,
               vocab_size: int = VOCAB_SIZE) -> np.memmap:
    """The shard's tokens as a read-only uint16 memmap (header validated, ids checked < `vocab_size`: its
    tokenizer's, `data_tokenizer`).

    The id check is one pass over the file per open: cheap next to training on it, and it turns
    a shard from another tokenizer into a clear error instead of an index error deep in the model.
    With `sha256` (the manifest's), the file's hash must match: a shard changed or damaged since
    `prepare` wrote it would otherwise train silently (0.8 s for a 100M-token shard on a loaded 2-core CPU).
    """
    if sha256 is not None and file_sha256(path) != sha256:
        raise UserError(f"{path}: sha256 differs from the manifest's; the shard changed since it was prepared "
                        "(run `gptscratch prepare` again)")
    count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))
    if check_vocab:
        top = int(tokens.max())
        if top >= vocab_size:
            raise UserError(f"{path}: token id {top} is not below its tokenizer's vocab size {vocab_size}")
    return tokens


def _split_of(path: Path) -> str | None:
    for split in SPLITS:
        if f"_{split}_" in path.name:
            return split
    return None


def find_shards(data_dir: str | os.PathLike, split: str) -> list[ShardInfo]:
    """The shards of `split` in `data_dir`, in order, with headers validated.

    With a `manifest.json` its shard list is authoritative (and each header must agree with its
    token count); without one, every `*.bin` whose name contains `_{split}_` is taken, sorted by
    name, which is how llm.c's and modded-nanogpt's shard directories are laid out.
    """
    data_dir = Path(data_dir)
    manifest_path = data_dir / MANIFEST
    manifest = read_manifest(data_dir)
    if manifest is not None:
        try:
            entries = [s for s in manifest["shards"] if s["split"] == split]
        except (KeyError, TypeError) as e:
            raise UserError(f"{manifest_path}: not a gptscratch manifest ({e})") from e
        shards = []
        for entry in entries:
            name = Path(str(entry["file"]))
            if name.is_absolute() or ".." in name.parts or len(name.parts) != 1:
                raise UserError(f"{manifest_path}: shard file {str(name)!r} is not a plain file name in {data_dir}")
            path = data_dir / name
            count = read_header(path)
            if count != entry["tokens"]:
                raise UserError(f"{path}: header says {count} tokens, {manifest_path} says {entry['tokens']}")
            shards.append(ShardInfo(path, count, entry.get("sha256")))
    else:
        paths = sorted(p for p in data_dir.glob("*.bin") if _split_of(p) == split)
        shards = [ShardInfo(p, read_header(p)) for p in paths]
    if not shards:
        raise UserError(f"{data_dir}: no {split} shards (expected files named *_{split}_NNNNNN.bin or a manifest.json)")
    return shards


def read_manifest(data_dir: str | os.PathLike) -> dict | None:
    """`data_dir`'s manifest.json, parsed; None when it has none (llm.c's and modded-nanogpt's directories)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such data directory; run `gptscratch prepare SOURCE --out {data_dir}`")
    path = data_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a gptscratch manifest ({e})") from e
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a gptscratch manifest (not a JSON object)")
    return manifest


def is_chat_data(data_dir: str | os.PathLike) -> bool:
    """Whether `data_dir` holds conversations (`prepare --chat`), as its manifest says; their ids hold the
    chat tokens, and which of them the assistant writes follows from the ids (`chat.assistant_mask`)."""
    manifest = read_manifest(data_dir)
    return manifest is not None and "chat" in manifest


def data_tokenizer(data_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer `data_dir`'s shards were made with: the one its manifest names (its copy in `tokenizer/`,
    checked against the manifest's hash), GPT-2's (with the chat tokens for chat data) when it names none."""
    manifest = read_manifest(data_dir) or {}
    record = manifest.get("tokenizer")
    return tokenizer_of(data_dir, record if isinstance(record, dict) else None, where=f"{Path(data_dir) / MANIFEST}")


_NAME_RE = re.compile(r"[^A-Za-z0-9.-]+")


def safe_name(text: str) -> str:
    """`text` made fit for a shard-name prefix: no underscores (they delimit the split) or slashes."""
    return _NAME_RE.sub("-", text).strip("-.") or "data"
