"""Where gptscratch keeps things: the default corpus's shards, and downloads between runs."""

from __future__ import annotations

import os
from pathlib import Path

# The shards of the default corpus (Shakespeare): `gptscratch train` prepares them here on first use.
DEFAULT_DATA = "data/shakespeare"


def cache_dir() -> Path:
    """$GPTSCRATCH_CACHE, else $XDG_CACHE_HOME/gptscratch, else ~/.cache/gptscratch."""
    if os.environ.get("GPTSCRATCH_CACHE"):
        return Path(os.environ["GPTSCRATCH_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "gptscratch"
    return Path.home() / ".cache" / "gptscratch"
