"""hf/modern.py: a modern model exported as Qwen3ForCausalLM (or Llama) loads in transformers with the same
logits, and what transformers cannot express is refused.
"""


import pytest
import torch

from gptscratch.errors import UserError
from gptscratch.model import GPT, GPTConfig
from gptscratch.train.config import resolve_config


def test_the_modern_arch_exports_as_qwen3():
    from gptscratch.hf.modern import check_exportable

    assert check_exportable(resolve_config("modern-demo").model_config()) == "qwen3"
    assert check_exportable(resolve_config("modern-124m").model_config()) == "qwen3"


@pytest.mark.parametrize("qk_norm, tied, norm_weight", [(True, False, False), (True, True, True), (False, False, True)])
def test_modern_export_loads_in_transformers_with_the_same_logits(tmp_path, qk_norm, tied, norm_weight):
    transformers = pytest.importorskip("transformers")
    from gptscratch.hf import save_hf

    options = dict(pos_embedding="rope", rope_base=500.0, norm="rmsnorm", norm_weight=norm_weight, qk_norm=qk_norm,
                   mlp="swiglu", tie_embeddings=tied, bias=False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64, vocab_multiple=64, **options)).eval()
    with torch.no_grad():  # non-trivial gains, so a gain exported in the wrong place would show
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    save_hf(model, tmp_path / "out")
    cls = transformers.Qwen3ForCausalLM if qk_norm else transformers.LlamaForCausalLM
    theirs = cls.from_pretrained(tmp_path / "out").eval()
    assert type(theirs).__name__ == cls.__name__
    x = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (theirs(x).logits - model(x)[0][..., :50257]).abs().max() <= 1e-4


@pytest.mark.parametrize("option, flag", [(dict(mlp="relu2"), "--mlp relu2"), (dict(bias=True), "--bias true"),
                                          (dict(logit_softcap=15.0), "--logit-softcap"),
                                          (dict(norm="layernorm"), "--norm layernorm")])
def test_export_refuses_options_transformers_cannot_express(tmp_path, option, flag):
    from gptscratch.hf import save_hf

    options = dict(pos_embedding="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True)
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32, **{**options, **option}))
    with pytest.raises(UserError, match=flag):
        save_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_qwen3_config_with_fields_of_the_wrong_type_is_one_line(tmp_path):
    import json

    from gptscratch.hf import read_hf_config

    cfg = {"model_type": "qwen3", "hidden_size": "64", "num_attention_heads": 2, "max_position_embeddings": 32,
           "vocab_size": 50257, "num_hidden_layers": 1, "intermediate_size": 160}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="hidden_size is '64', expected an integer"):
        read_hf_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "intermediate_size": 100}))
    with pytest.raises(UserError, match="intermediate_size 100"):
        read_hf_config(str(tmp_path))
