"""generate.py: cached sampling against uncached and transformers decoding, the sampling filters, safe settings."""

import pytest
import torch

from gptscratch.errors import UserError
from gptscratch.generate import filter_logits, generate
from gptscratch.hf import load_hf
from gptscratch.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()


def prompt(t=5, b=1, seed=0):
    return torch.randint(0, 50257, (b, t), generator=torch.Generator().manual_seed(seed))


def test_cached_and_uncached_greedy_identical(tiny):
    p = prompt(b=3)
    a = generate(tiny, p, 64, temperature=0.0, use_cache=True)
    b = generate(tiny, p, 64, temperature=0.0, use_cache=False)
    assert a.shape == (3, 69)
    assert torch.equal(a, b)  # 64 + 5 > block_size 48: the window slides too


def test_greedy_equals_transformers_generate(hf_tiny):
    hf, path = hf_tiny
    ours = load_hf(str(path)).eval()
    p = prompt(t=6, b=2)
    ref = hf.generate(p, max_new_tokens=30, do_sample=False, pad_token_id=50256,
                      attention_mask=torch.ones_like(p))
    got = generate(ours, p, 30, temperature=0.0)
    assert torch.equal(ref, got)


def test_top_k_one_is_greedy(tiny):
    p = prompt()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(tiny, p, 20, top_k=1, generator=g), generate(tiny, p, 20, temperature=0.0))


def test_top_p_keeps_only_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.75))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.8
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.5))
    assert kept.tolist() == [[True, False, False, False]]
    kept = torch.isfinite(filter_logits(probs.log()[:, [2, 0, 3, 1]], top_p=0.75))
    assert kept.tolist() == [[False, True, False, True]]  # order of the vocab does not matter
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(filter_logits(probs.log(), top_p=0.75).softmax(-1).expand(2000, 4), 1, generator=g)
    assert set(samples.flatten().tolist()) == {0, 1}


def test_prompt_longer_than_block_size(tiny):
    p = prompt(t=100)
    out = generate(tiny, p, 5, temperature=0.0)
    assert out.shape == (1, 105)
    assert torch.equal(out, generate(tiny, p, 5, temperature=0.0, use_cache=False))


def test_stop_token_and_streaming(tiny):
    p = prompt(b=2)
    free = generate(tiny, p, 10, temperature=0.0)
    stop = int(free[0, 7])  # a token row 0 produces at its third step
    seen = []
    out = generate(tiny, p, 10, temperature=0.0, stop_token=stop, on_token=seen.append)
    assert (out[0, 8:] == stop).all()  # a finished row keeps emitting the stop token
    assert torch.equal(torch.stack(seen, 1), out[:, 5:])


def test_padded_vocab_rows_are_never_sampled():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=100, vocab_multiple=64, n_layer=1, n_head=1, n_embd=8)).eval()
    with torch.no_grad():
        model.transformer.wte.weight[100:] = 50.0  # padding rows would win every argmax
    out = generate(model, torch.zeros(4, 1, dtype=torch.long), 20, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 100


def test_each_row_of_a_batch_decodes_as_it_would_alone(tiny):
    prompts = [[1, 2, 3], [4, 5, 9], [6, 7, 8]]
    got = generate(tiny, torch.tensor(prompts), 6, temperature=0.0).tolist()
    for p, g in zip(prompts, got, strict=True):
        assert g == generate(tiny, torch.tensor([p]), 6, temperature=0.0)[0].tolist()


def test_bad_sampling_arguments(tiny):
    with pytest.raises(UserError, match="top-p"):
        generate(tiny, prompt(), 2, top_p=1.5)
    with pytest.raises(UserError, match="no tokens"):
        generate(tiny, torch.zeros(1, 0, dtype=torch.long), 2)


def test_top_k_sampling_follows_the_renormalised_distribution():
    from gptscratch.generate import next_token

    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    logits = probs.log().expand(20000, 5)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(next_token(logits, 1.0, 3, None, g), minlength=5).float() / 20000
    expected = torch.tensor([0.0, 0.4, 0.0, 0.3, 0.15]) / 0.85  # the 3 most likely, renormalised
    assert (counts - expected).abs().max() < 0.015
    # with top-p on top: of those 3, the nucleus of mass 0.8 is {1, 3} (0.47 + 0.35 = 0.82 >= 0.8)
    counts = torch.bincount(next_token(logits, 1.0, 3, 0.8, g), minlength=5).float() / 20000
    assert (counts - torch.tensor([0.0, 0.4, 0.0, 0.3, 0.0]) / 0.7).abs().max() < 0.015


@pytest.mark.parametrize("options", [{}, {"pos_embedding": "rope", "qk_norm": True, "norm": "rmsnorm",
                                          "tie_embeddings": False}], ids=["learned", "rope"])
def test_rows_at_different_positions_decode_as_each_row_alone(options):
    """A cache with per-row lengths (the server's batched decoding): each row's logits equal an uncached
    forward pass over that row's own tokens, whatever the other rows hold."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=16, **options)).eval()
    prompts = [torch.randint(0, 100, (n,)) for n in (3, 7, 5)]
    new = torch.randint(0, 100, (3, 4))
    cache = model.new_cache(3, per_row=True)
    assert all(bool((buf == 0).all()) for buf in cache.k + cache.v)  # never NaN bit patterns from torch.empty
    for buf in cache.k + cache.v:  # what earlier requests leave behind: it must not leak into any row
        buf.normal_(0, 100)
    with torch.no_grad():
        for b, p in enumerate(prompts):  # each prompt prefilled alone into its row
            model(p[None], cache=cache.rows(b, b + 1, empty=True))
            cache.lengths[b] = len(p)
        cache.copy_row(1, 2, len(prompts[1]))  # row 2 now continues prompt 1, as n > 1 choices do
        prompts[2] = prompts[1]
        stepped = torch.stack([model(new[:, t : t + 1], cache=cache)[0][:, 0] for t in range(4)], dim=1)
        for b, p in enumerate(prompts):
            alone = model(torch.cat([p, new[b]])[None])[0][0, len(p) : len(p) + 4]
            torch.testing.assert_close(stepped[b], alone, atol=1e-5, rtol=1e-5)
    assert cache.lengths.tolist() == [3 + 4, 7 + 4, 7 + 4]
    # rows of one length (1 and 2) need no mask, and take the unmasked path: still each row alone
    last = torch.randint(0, 100, (2, 1))
    with torch.no_grad():
        view = cache.rows(1, 3)
        stepped = model(last, cache=view)[0][:, 0]
        assert view.mask is None
        for b in range(2):
            alone = model(torch.cat([prompts[1], new[b + 1], last[b]])[None])[0][0, -1]
            torch.testing.assert_close(stepped[b], alone, atol=1e-5, rtol=1e-5)


def padded_model(block_size: int = 32) -> GPT:
    """vocab_size 50304, as nanoGPT trains GPT-2: 47 rows the tokenizer has no token for, here made to win every
    pick (every position's final hidden state is all ones, and so are those rows alone)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=50304, n_layer=1, n_head=1, n_embd=8)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[50257:] = 1.0
    return model


@pytest.mark.parametrize("temperature", [1e-300, 1e-40, 1e-6])
def test_a_temperature_too_small_for_float32_decodes_greedily(tiny, temperature):
    p = prompt(b=2)
    greedy = generate(tiny, p, 12, temperature=0.0)
    for top_k in (None, 50):
        got = generate(tiny, p, 12, temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(0))
        assert torch.equal(got, greedy)


def test_a_top_p_below_float32s_smallest_value_keeps_the_top_token(tiny):
    probs = torch.tensor([[0.15, 0.5, 0.3, 0.05]])
    assert torch.isfinite(filter_logits(probs.log(), top_p=1e-300)).tolist() == [[False, True, False, False]]
    p = prompt(b=2)
    greedy = generate(tiny, p, 12, temperature=0.0)
    for top_k in (None, 50):
        got = generate(tiny, p, 12, top_k=top_k, top_p=1e-300, generator=torch.Generator().manual_seed(0))
        assert torch.equal(got, greedy)


def test_a_model_with_more_rows_than_the_tokenizer_never_samples_an_id_it_lacks():
    model = padded_model()
    start = torch.zeros(4, 1, dtype=torch.long)
    with torch.no_grad():
        assert int(model(start)[0][0, -1].argmax()) >= 50257  # unmasked, a padded id would win
    for temperature in (0.0, 1.0):
        out = generate(model, start, 20, temperature=temperature, top_k=None,
                       generator=torch.Generator().manual_seed(0))
        assert int(out.max()) < 50257


@pytest.mark.parametrize("flags", [["--temperature", "1e-300"], ["--top-p", "1e-300"]], ids=["temperature", "top-p"])
def test_cli_sample_with_a_vanishing_temperature_or_top_p_prints_the_greedy_text(tmp_path, capsys, flags):
    from gptscratch.cli import main
    from gptscratch.hf import save_hf

    torch.manual_seed(0)
    save_hf(GPT(GPTConfig(block_size=64, n_layer=1, n_head=1, n_embd=8)), tmp_path / "hf")
    args = ["sample", "--hf", str(tmp_path / "hf"), "--prompt", "Hello", "--max-new-tokens", "8", "--no-stop"]
    assert main([*args, "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main([*args, *flags]) == 0
    assert capsys.readouterr().out == greedy and greedy.startswith("Hello") and len(greedy) > len("Hello\n")


def test_cli_sample_from_a_gpt2_directory_with_vocab_size_50304_prints_text(tmp_path, capsys):
    from gptscratch.cli import main
    from gptscratch.hf import save_hf

    save_hf(padded_model(block_size=64), tmp_path / "padded")
    assert main(["sample", "--hf", str(tmp_path / "padded"), "--prompt", "Hello", "--max-new-tokens", "8",
                 "--no-stop"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Hello") and len(out) > len("Hello\n")
