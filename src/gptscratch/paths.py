"""Where gptscratch keeps things: the default corpus's shards, and downloads between runs."""

from __future__ import annotations

import os
from pathlib import Path

from gptscratch.errors import UserError

# The shards of the default corpus (Shakespeare): `gptscratch train` prepares them here on first use.
DEFAULT_DATA = "data/shakespeare"


def cache_dir() -> Path:
    """$GPTSCRATCH_CACHE, else $XDG_CACHE_HOME/gptscratch, else ~/.cache/gptscratch."""
    if os.environ.get("GPTSCRATCH_CACHE"):
        return Path(os.environ["GPTSCRATCH_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "gptscratch"
    return Path.home() / ".cache" / "gptscratch"


def make_cache_dir(*parts: str) -> Path:
    """`cache_dir() / parts`, created if missing. One that cannot be created is the user's to move, so it is one
    line naming it and the variable that moves it (a missing parent, as under /proc, included)."""
    path = cache_dir().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the cache directory {path} ({e.strerror or e}); set GPTSCRATCH_CACHE to a "
                        "directory that can be written") from None
    return path
