import pytest
import torch


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
