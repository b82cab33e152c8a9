"""Files written so that a kill at any moment leaves the old version or the new one, never half of one.

Every file gptscratch writes for later (configs, manifests, shards, plots, downloads) goes through
`atomic_path`: the bytes go to a temporary name beside the target and are renamed onto it only once
complete; `atomic_dir` does the same for a whole directory (a checkpoint, an export). Both turn an OSError
(a full disk, a read-only directory) into a one-line UserError naming the file. Only metrics.jsonl is
appended to in place (`append_text`).
Nothing here imports torch, so that `prepare` and its workers never load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptscratch.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; renamed onto `path` when the block succeeds.

    The temporary name carries the process id, so two processes writing the same file (DDP ranks
    downloading one dataset) never write into each other's; an error removes it, and an OSError (a full
    disk, a read-only directory) becomes a one-line UserError naming `path`. `fsync` flushes the bytes to
    disk before the rename, for files whose loss after a power cut would go unnoticed (shards).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path):
            yield tmp
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_path` for a directory: fill the temporary `.tmp-NAME-PID` beside `path`; renamed onto `path`
    as a whole when the block succeeds (an existing `path` is replaced only then). On an error the
    temporary directory is removed at once (a full disk gets its space back); a killed writer leaves it
    behind, named so that the owner of the parent directory can sweep it (train/rundir.py does for checkpoints).
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with writing(path):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            yield tmp
            fsync_dir(tmp)
            if path.exists():  # the old one stays whole until the new one is complete
                old = path.with_name(f".old-{path.name}-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """An OSError in the block (disk full, read-only, no permission) as one line naming `path`."""
    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append to a log (metrics.jsonl): not atomic, a line cut short by a kill is skipped by its reader."""
    with writing(path), open(path, "a") as f:
        f.write(text)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """safetensors' save_file, its I/O errors (raised from Rust as SafetensorError) as the OSError they are."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", str(e))  # safetensors 0.8, and before
        if code is None:
            raise
        errno = int(code.group(1) or code.group(2))
        raise OSError(errno, os.strerror(errno), str(path)) from None


def read_safetensors(path: str | os.PathLike) -> dict:
    """A safetensors file's tensors; a truncated or corrupt file is a UserError naming it."""
    from safetensors import SafetensorError  # here, not above: safetensors.torch loads torch
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from None
