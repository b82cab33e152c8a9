"""Data: sources (sources.py), llm.c token shards (shards.py), `prepare` (prepare.py), TokenLoader (loader.py).

Names are imported lazily so that `gptscratch prepare` and its worker processes never import torch. The
`prepare` function is `gptscratch.data.prepare.prepare`: `gptscratch.data.prepare` is its module.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TokenLoader": "gptscratch.data.loader",
    "ensure_shakespeare": "gptscratch.data.prepare",
    "open_source": "gptscratch.data.sources",
    "iter_dataset_texts": "gptscratch.data.sources",
    "write_shard": "gptscratch.data.shards",
    "open_shard": "gptscratch.data.shards",
    "read_header": "gptscratch.data.shards",
    "find_shards": "gptscratch.data.shards",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gptscratch.data' has no attribute {name!r}")
