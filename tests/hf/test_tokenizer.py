"""An export carries GPT-2's tokenizer: transformers loads it offline and encodes exactly as gptscratch does."""

import pytest
import torch

from gptscratch.generate import generate
from gptscratch.hf import save_hf
from gptscratch.hf.tokenizer import FILES
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import EOT_TOKEN, get_encoding

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, I'm a language model,",
    "héllo wörld, ünïcode: 日本語のテキスト 🙂 and ﬁ ligatures",
    "digits 1234567890, 3.14159, 2026-12-02 and 10,000,000",
    "   leading   spaces,\ttabs\t\tand\n\n\nnewlines   \n",
    "trailing spaces    ",
    "<|endoftext|>a special token, then text<|endoftext|>",
    "a\u00a0no-break space, a\u200bzero-width one, and\r\nCRLF",
    "it's they're we've I'd y'all",
]
MODERN = dict(bias=False, pos_embedding="rope", norm="rmsnorm", norm_weight=False, qk_norm=True, mlp="swiglu",
              tie_embeddings=False)


@pytest.mark.parametrize("options", [{}, MODERN], ids=["gpt2", "qwen3"])
def test_an_export_loads_with_autotokenizer_offline_and_encodes_as_ours(tmp_path, monkeypatch, options):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    out = save_hf(GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=32, vocab_multiple=64, **options)),
                  tmp_path / "export")
    assert all((out / name).is_file() for name in FILES)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    enc = get_encoding()
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == enc.encode(text, allowed_special="all"), text
        assert tok.decode(ids) == text
    assert (tok.eos_token_id, tok.bos_token_id, tok.model_max_length, len(tok)) == (EOT_TOKEN, EOT_TOKEN, 64, 50257)


def test_pipeline_generates_from_an_export_with_no_network_as_our_generate_does(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    out = save_hf(model, tmp_path / "export")
    pipe = transformers.pipeline("text-generation", model=str(out), device="cpu")
    prompt = "The king said"
    text = pipe(prompt, max_new_tokens=8, do_sample=False, return_full_text=False)[0]["generated_text"]
    enc = get_encoding()
    ids = torch.tensor([enc.encode(prompt)])
    ours = generate(model, ids, 8, temperature=0.0)[0, ids.size(1):].tolist()
    assert text == enc.decode(ours)
