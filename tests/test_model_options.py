"""The model options beyond GPT-2: each against an independent computation, and together through the cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptscratch.errors import UserError
from gptscratch.generate import generate
from gptscratch.model import GPT, GPTConfig, Rotary, fused_linear_cross_entropy

MODERN = dict(pos_embedding="rope", norm="rmsnorm", norm_weight=False, qk_norm=True, mlp="relu2",
              tie_embeddings=False, logit_softcap=15.0, zero_init_proj=False)
OPTION_SETS = {
    "rope": dict(pos_embedding="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "rmsnorm-free": dict(norm="rmsnorm", norm_weight=False),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "swiglu": dict(mlp="swiglu"),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=3.0),
    "modern": MODERN,
    "modern-swiglu-nobias": {**MODERN, "mlp": "swiglu", "bias": False, "norm_weight": True},
}


def tiny(**options) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=97, n_layer=2, n_head=2, n_embd=32, **options))


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_chunked_loss_equals_full_logits_loss_and_grads(name):
    model = tiny(**OPTION_SETS[name])
    x = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    _, full = model(x, y)
    full_grads = torch.autograd.grad(full, list(model.parameters()))
    _, chunked = model(x, y, return_logits=False)
    chunked_grads = torch.autograd.grad(chunked, list(model.parameters()))
    assert abs(full.item() - chunked.item()) < 1e-5
    for a, b in zip(full_grads, chunked_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_cached_decoding_equals_uncached_logits(name):
    model = tiny(**OPTION_SETS[name]).eval()
    for p in model.parameters():  # zero-initialised projections would hide a position bug
        if p.dim() == 2 and p.abs().max() == 0:
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache(2)
        parts = [model(x[:, :10], cache=cache)[0], model(x[:, 10:13], cache=cache)[0]]
        parts += [model(x[:, t:t + 1], cache=cache)[0] for t in range(13, 24)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("name", ["rope", "softcap", "modern"])
def test_last_only_logits_are_the_last_position_of_the_full_ones(name):
    model = tiny(**OPTION_SETS[name]).eval()
    x = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _ = model(x)
        last, _ = model(x, last_only=True)
        cache = model.new_cache(2)
        cached = model(x, cache=cache, last_only=True)[0]
    assert last.shape == (2, 1, full.size(-1))
    assert torch.allclose(last, full[:, -1:], atol=1e-6)
    assert torch.allclose(cached, full[:, -1:], atol=1e-5)
    with pytest.raises(ValueError, match="last_only"):
        model(x, torch.roll(x, -1, dims=1), last_only=True)


def test_rotary_matches_the_complex_number_form():
    # RoFormer's definition: channel pair (i, i + d/2) as a complex number times e^{i * pos * base^(-2i/d)}
    d, T, base = 8, 5, 10000.0
    x = torch.randn(1, 1, T, d)
    pair = torch.complex(x[..., : d // 2], x[..., d // 2:])
    freqs = base ** (-torch.arange(0, d, 2).float() / d)
    rotated = pair * torch.polar(torch.ones(T, d // 2), torch.outer(torch.arange(3, 3 + T).float(), freqs))
    want = torch.cat([rotated.real, rotated.imag], dim=-1)
    assert torch.allclose(Rotary(d, 16, base)(x, start=3), want, atol=1e-5)


def test_rope_attention_depends_only_on_relative_position():
    rot = Rotary(8, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    dots = [(rot(q, a) * rot(k, b)).sum().item() for a, b in ((5, 2), (20, 17), (40, 37))]
    assert max(dots) - min(dots) < 1e-4


def test_option_modules_are_what_they_say():
    x = torch.randn(4, 32)
    relu2 = tiny(mlp="relu2").transformer.h[0].mlp
    assert torch.allclose(relu2(x), relu2.c_proj(torch.relu(relu2.c_fc(x)) ** 2))
    swiglu = tiny(mlp="swiglu").transformer.h[0].mlp
    gate, up = swiglu.c_fc(x).chunk(2, dim=-1)
    assert torch.allclose(swiglu(x), swiglu.c_proj(gate * torch.sigmoid(gate) * up))
    norm = tiny(norm="rmsnorm", norm_weight=False).transformer.ln_f
    assert list(norm.parameters()) == []
    assert torch.allclose(norm(x), x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6), atol=1e-6)
    model = tiny(**MODERN)
    assert "wpe" not in model.transformer and model.lm_head.weight is not model.transformer.wte.weight
    logits, _ = model(torch.randint(0, 97, (1, 8)))
    assert logits.abs().max() < 15.0
    # sizes: SwiGLU's 3 matrices hold about what GELU's 2 do
    def mlp_size(mlp):
        return sum(p.numel() for p in GPT(GPTConfig(n_layer=1, n_embd=768, mlp=mlp)).transformer.h[0].mlp.parameters())

    assert abs(mlp_size("swiglu") - mlp_size("gelu")) / mlp_size("gelu") < 0.01


def test_zero_init_projections_start_blocks_as_identity():
    model = tiny(zero_init_proj=True, tie_embeddings=False)
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.abs().max() == 0 and block.mlp.c_proj.weight.abs().max() == 0
    assert model.lm_head.weight.abs().max() == 0
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.2)
    _, loss = model(torch.randint(0, 97, (1, 8)), torch.randint(0, 97, (1, 8)))
    assert loss.item() == pytest.approx(math.log(97), rel=1e-6)  # a zero head: uniform over the vocab


def test_softcap_in_the_chunked_loss_matches_autograd():
    torch.manual_seed(0)
    x = torch.randn(19, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    t = torch.randint(0, 50, (19,))
    t[0] = -1
    ref = F.cross_entropy(4.0 * torch.tanh((x @ w.t()) / 4.0), t, ignore_index=-1)
    got = fused_linear_cross_entropy(x, w, t, chunk_tokens=5, softcap=4.0)
    assert abs(ref.item() - got.item()) < 1e-5
    for a, b in zip(torch.autograd.grad(ref, (x, w)), torch.autograd.grad(got, (x, w)), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_bad_options_are_refused_in_one_line():
    for options, message in ((dict(pos_embedding="alibi"), "pos_embedding='alibi'"), (dict(mlp="geglu"), "mlp='geglu'"),
                             (dict(norm="batch"), "norm='batch'"), (dict(logit_softcap=-1.0), "softcap"),
                             (dict(pos_embedding="rope", n_head=32), "even head size")):
        with pytest.raises(UserError, match=message):
            GPTConfig(n_embd=32, n_head=options.pop("n_head", 2), **options).validate()


def test_generate_runs_on_the_modern_model():
    model = tiny(**MODERN).eval()
    out = generate(model, torch.zeros(1, 3, dtype=torch.long), 40, temperature=0.0)  # past block_size: slides
    assert out.shape == (1, 43)


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
