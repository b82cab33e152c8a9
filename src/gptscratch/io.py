"""Files written so that a kill at any moment leaves the old version or the new one, never half of one.

Every file gptscratch writes for later (configs, manifests, shards, metrics, plots, exported weights,
downloads) goes through `atomic_path`: the bytes go to a temporary name beside the target and are renamed
onto it only once complete. Checkpoints apply the same idea to a whole directory (checkpoint.py).
Nothing here imports torch, so that `prepare` and its workers never load it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptscratch.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; renamed onto `path` when the block succeeds.

    The temporary name carries the process id, so two processes writing the same file (DDP ranks
    downloading one dataset) never write into each other's; an error removes it. `fsync` flushes the
    bytes to disk before the rename, for files whose loss after a power cut would go unnoticed (shards).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


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


def read_safetensors(path: str | os.PathLike) -> dict:
    """A safetensors file's tensors; a truncated or corrupt file is a UserError naming it."""
    from safetensors import SafetensorError  # here, not above: safetensors.torch loads torch
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from None
