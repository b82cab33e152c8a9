import json

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from gptscratch.errors import UserError
from gptscratch.hf import load_hf, save_hf
from gptscratch.model import GPT, GPTConfig, fused_linear_cross_entropy


def tokens(n=2, t=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50257, (n, t), generator=g)


def test_hf_to_ours_logits_and_loss_match(hf_tiny):
    hf, path = hf_tiny
    ours = load_hf(str(path)).eval()
    x = tokens()
    with torch.no_grad():
        ref = hf(x, labels=x)
        logits, loss = ours(x[:, :-1], x[:, 1:])
    assert (ref.logits[:, :-1] - logits).abs().max() <= 1e-5
    assert abs(ref.loss.item() - loss.item()) <= 1e-5


def test_ours_to_hf_round_trip(hf_tiny, tmp_path):
    _, path = hf_tiny
    ours = load_hf(str(path)).eval()
    save_hf(ours, str(tmp_path / "export"))
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    x = tokens()
    with torch.no_grad():
        assert (back(x).logits - ours(x)[0]).abs().max() <= 1e-5


def test_padded_vocab_export_trims_rows(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32, vocab_multiple=64)).eval()
    assert model.lm_head.weight.shape[0] == 50304
    save_hf(model, str(tmp_path))
    back = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert back.config.vocab_size == 50257
    x = tokens(t=16)
    with torch.no_grad():
        assert (back(x).logits - model(x)[0][..., :50257]).abs().max() <= 1e-5


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


def test_not_gpt2_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(UserError, match="model_type"):
        load_hf(str(tmp_path))


def test_truncated_safetensors_is_refused(hf_tiny, tmp_path):
    _, path = hf_tiny
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_hf(str(path))


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_hf(str(tmp_path / "nope"))


def test_hub_id_offline_names_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="local directory"):
        load_hf("gpt2")
