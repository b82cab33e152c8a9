"""model.py: GPT-2's init and chunked loss, and the options beyond GPT-2, each against an independent computation
and together through the cache.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gptscratch.errors import UserError
from gptscratch.generate import generate
from gptscratch.model import GPT, GPTConfig, Rotary, fused_linear_cross_entropy
from gptscratch.train.config import ARCHS


def tokens(n=2, t=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50257, (n, t), generator=g)


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64))
    std_proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / (2 * 8) ** 0.5) < 0.001
    assert model.lm_head.weight is model.transformer.wte.weight


def test_fused_cross_entropy_matches_plain_loss_and_grads():
    torch.manual_seed(0)
    x = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(100, 16, requires_grad=True)
    t = torch.randint(0, 100, (37,))
    t[3] = -1  # ignored position
    ref = F.cross_entropy(x @ w.t(), t, ignore_index=-1)
    gx, gw = torch.autograd.grad(ref, (x, w))
    got = fused_linear_cross_entropy(x, w, t, chunk_tokens=8)
    fx, fw = torch.autograd.grad(got * 1.0, (x, w))
    assert abs(ref.item() - got.item()) < 1e-5
    assert torch.allclose(gx, fx, atol=1e-6) and torch.allclose(gw, fw, atol=1e-6)
    with torch.no_grad():  # the evaluation path skips the gradients
        assert abs(fused_linear_cross_entropy(x, w, t, chunk_tokens=8).item() - ref.item()) < 1e-5


def test_per_token_losses_equal_plain_cross_entropy_on_both_paths_with_ignored_targets():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=300, n_layer=1, n_head=2, n_embd=32)).eval()
    x, y = torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16))
    y[0, :5] = -1
    with torch.no_grad():
        logits, _ = model(x)
        expected = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none").view(3, 16)
        _, chunked = model(x, y, return_logits=False, loss_reduction="none")
        _, full = model(x, y, loss_reduction="none")
    assert chunked.shape == full.shape == (3, 16) and (chunked[0, :5] == 0).all()
    assert torch.allclose(chunked, expected, atol=1e-5) and torch.allclose(full, expected, atol=1e-5)


def test_chunked_loss_runs_its_matmuls_in_the_dtype_it_is_given():
    # the dtype comes as an argument: an autocast around the call is not read back
    torch.manual_seed(0)
    x, w, t = torch.randn(40, 16), torch.randn(100, 16), torch.randint(0, 100, (40,))
    ref32 = F.cross_entropy(x @ w.t(), t)
    ref16 = F.cross_entropy((x.bfloat16() @ w.bfloat16().t()).float(), t)
    assert abs(ref32.item() - ref16.item()) > 1e-3  # the two precisions are told apart
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert abs(fused_linear_cross_entropy(x, w, t).item() - ref32.item()) < 1e-5
    with torch.no_grad():
        assert abs(fused_linear_cross_entropy(x, w, t, torch.bfloat16).item() - ref16.item()) < 1e-5


def test_chunked_loss_compiles_to_one_graph_with_the_same_grads():
    # a data-dependent branch in the loss (say `if mask.all()`) would split torch.compile's graph and
    # sync the device every step; aot_eager traces forward and backward without the slow code generation
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    x, y = tokens(t=12) % 50, tokens(t=12, seed=2) % 50
    y[0, 3] = -1

    def loss_of(m):
        return m(x, y, return_logits=False)[1]

    explained = torch._dynamo.explain(loss_of)(model)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    ref = loss_of(model)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch._dynamo.reset()
    got = torch.compile(loss_of, backend="aot_eager")(model)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    assert abs(ref.item() - got.item()) < 1e-6
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ref_grads, got_grads, strict=True))


def test_kv_cache_forward_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    x = tokens(t=20)
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache(2)
        a, _ = model(x[:, :7], cache=cache)  # prefill
        b, _ = model(x[:, 7:12], cache=cache)  # several tokens at once, after a prefix
        c = [model(x[:, i : i + 1], cache=cache)[0] for i in range(12, 20)]
    assert torch.allclose(torch.cat([a, b, *c], dim=1), full, atol=1e-5)






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


def test_modern_model_compiles_to_one_graph():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16, **{
        k: v for k, v in ARCHS["modern"].items()}))
    x = torch.randint(0, 50, (2, 12))
    explained = torch._dynamo.explain(lambda m: m(x, x, return_logits=False)[1])(model)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


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
