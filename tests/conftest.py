"""Fixtures several test files use: a tiny transformers GPT-2 on disk, and small shard directories."""

import numpy as np
import pytest
import torch

from tests.helpers import write_llmc_shard


@pytest.fixture
def hf_tiny(tmp_path):
    """A tiny random transformers GPT-2 saved to disk, and its directory."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=50257)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    path = tmp_path / "hf_tiny"
    model.save_pretrained(path)
    return model, path


@pytest.fixture
def shards(tmp_path):
    """A directory of llm.c shards of random tokens: 20k train, 4k val."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    # a low-entropy stream (tokens from a small set) so that a few steps visibly learn
    write_llmc_shard(d / "tiny_train_000000.bin", rng.integers(0, 300, 20_000))
    write_llmc_shard(d / "tiny_val_000000.bin", rng.integers(0, 300, 4_000))
    return d


@pytest.fixture
def corpus(tmp_path):
    """llm.c shards of random GPT-2 ids: 12k train, 3k val."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    write_llmc_shard(d / "c_train_000000.bin", rng.integers(0, 2000, 12_000))
    val = rng.integers(0, 2000, 3_000)
    val[::97] = 50256  # document ends, which bits per byte leaves out
    write_llmc_shard(d / "c_val_000000.bin", val)
    return d
