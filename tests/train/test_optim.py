"""train/optim.py: the lr schedules by hand, AdamW's decay groups, Muon's share of the parameters."""

import math

import pytest

from gptscratch.model import GPT, GPTConfig
from gptscratch.train.config import resolve_config
from gptscratch.train.optim import MuonAdamW, build_optimizer, lr_at, param_groups


def test_lr_schedule_by_hand():
    args = dict(max_lr=6e-4, min_lr=6e-5, warmup_steps=10, max_steps=110)
    assert lr_at(0, **args) == pytest.approx(6e-5)  # warmup starts at max_lr / warmup_steps
    assert lr_at(9, **args) == pytest.approx(6e-4)  # and ends at max_lr
    assert lr_at(10, **args) == pytest.approx(6e-4)  # cosine starts at the top
    assert lr_at(60, **args) == pytest.approx((6e-4 + 6e-5) / 2)  # half way down the cosine
    assert lr_at(35, **args) == pytest.approx(6e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * 5.4e-4)
    assert lr_at(110, **args) == pytest.approx(6e-5)
    assert lr_at(10_000, **args) == pytest.approx(6e-5)


def test_weight_decay_only_on_2d_parameters():
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.dim() == 1}
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}
    total = sum(p.numel() for p in decay["params"] + no_decay["params"])
    assert total == model.num_params()  # the tied head is not a second parameter





def test_wsd_schedule_by_hand():
    args = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, schedule="wsd", decay_frac=0.2)
    assert lr_at(0, **args) == pytest.approx(0.1)  # the same warmup as cosine
    assert lr_at(10, **args) == lr_at(50, **args) == lr_at(87, **args) == 1.0  # stable until 110 - 22 = 88
    assert lr_at(88, **args) == 1.0  # the decay starts at the top ...
    assert lr_at(99, **args) == pytest.approx(1.0 - 0.9 * 11 / 22)  # ... and falls linearly
    assert lr_at(110, **args) == pytest.approx(0.1)


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, qk_norm=True, norm="rmsnorm",
                          tie_embeddings=False))
    cfg = resolve_config("tiny", {"optimizer": "muon", "lr": 1e-3, "muon_lr": 2e-2})
    opt = build_optimizer(model, cfg, "cpu")
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert {"transformer.wte.weight", "lm_head.weight"} <= adamw and not muon & adamw
    assert muon | adamw == set(names.values())
    assert [g["peak_lr"] for g in opt.muon.param_groups] == [2e-2]
    assert {g["peak_lr"] for g in opt.adamw.param_groups} == {1e-3}
