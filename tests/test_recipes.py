"""The modern recipe through training: Muon + AdamW groups, the wsd schedule, --arch, exact resume, DDP."""


import pytest
import torch

from gptscratch.cli import main
from gptscratch.errors import UserError
from gptscratch.model import GPT, GPTConfig
from gptscratch.train.config import ARCHS, resolve_config
from gptscratch.train.optim import MuonAdamW, build_optimizer, lr_at

from .test_train import assert_ddp_equals_accumulation, shards, train_losses  # noqa: F401  (shards: a fixture)

MODERN = ["--preset", "tiny", "--device", "cpu", "--arch", "modern", "--optimizer", "muon", "--schedule", "wsd"]


def test_wsd_schedule_by_hand():
    args = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, schedule="wsd", decay_frac=0.2)
    assert lr_at(0, **args) == pytest.approx(0.1)  # the same warmup as cosine
    assert lr_at(10, **args) == lr_at(50, **args) == lr_at(87, **args) == 1.0  # stable until 110 - 22 = 88
    assert lr_at(88, **args) == 1.0  # the decay starts at the top ...
    assert lr_at(99, **args) == pytest.approx(1.0 - 0.9 * 11 / 22)  # ... and falls linearly
    assert lr_at(110, **args) == pytest.approx(0.1)


def test_arch_sets_the_options_and_single_flags_override_them():
    cfg = resolve_config("demo", {"arch": "modern", "mlp": "relu2"})
    model = cfg.model_config()
    assert (model.pos_embedding, model.qk_norm, model.mlp, model.bias) == ("rope", True, "relu2", False)
    assert resolve_config("modern-demo").model_config().mlp == ARCHS["modern"]["mlp"]
    gpt2 = resolve_config("modern-demo", {"arch": "gpt2"}).model_config()
    assert gpt2 == resolve_config("demo").model_config()  # --arch gpt2 is GPT-2 exactly, whatever the preset
    with pytest.raises(UserError, match="--arch 'llama'"):
        resolve_config("demo", {"arch": "llama"})
    with pytest.raises(UserError, match="--optimizer 'sgd'"):
        resolve_config("demo", {"optimizer": "sgd"})


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


def test_modern_recipe_learns_and_resumes_exactly(shards, tmp_path, capsys):  # noqa: F811
    common = [*MODERN, "--data", str(shards), "--max-steps", "12", "--ckpt-interval", "6", "--eval-interval", "6",
              "--lr", "3e-3", "--sample-tokens", "2"]
    assert main(["train", *common, "--out", str(tmp_path / "ref")]) == 0
    ref = train_losses(tmp_path / "ref")
    assert ref[11] < ref[0] - 0.2  # it learns (slowly at first: the zero-initialised head starts uniform)
    # continue from the run's step-6 checkpoint into another directory (the schedule depends on max_steps,
    # so the cut must come from the same 12-step run)
    middle = tmp_path / "ref" / "checkpoints" / "step_000006"
    assert main(["train", *common, "--out", str(tmp_path / "cut"), "--resume", str(middle)]) == 0
    resumed = train_losses(tmp_path / "cut")
    assert sorted(resumed) == list(range(6, 12))
    assert resumed == pytest.approx({s: ref[s] for s in range(6, 12)}, rel=1e-5, abs=0)  # Muon's momentum carried
    from gptscratch.train.checkpoint import load_checkpoint

    a = load_checkpoint(tmp_path / "ref").load_model().state_dict()
    b = load_checkpoint(tmp_path / "cut").load_model().state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    # an AdamW checkpoint does not resume as Muon
    assert main(["train", *common[:-8], "--data", str(shards), "--out", str(tmp_path / "ref"), "--max-steps", "14",
                 "--resume", "--optimizer", "adamw"]) == 2
    assert "optimizer" in capsys.readouterr().err


def test_modern_ddp_two_processes_equal_one_process_with_accumulation(shards, tmp_path):  # noqa: F811
    common = [*MODERN, "--data", str(shards), "--max-steps", "3", "--batch-size", "2", "--total-batch-tokens", "128",
              "--eval-interval", "0", "--num-samples", "1", "--sample-tokens", "1"]
    assert_ddp_equals_accumulation(common, tmp_path)


def test_modern_model_compiles_to_one_graph():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16, **{
        k: v for k, v in ARCHS["modern"].items()}))
    x = torch.randint(0, 50, (2, 12))
    explained = torch._dynamo.explain(lambda m: m(x, x, return_logits=False)[1])(model)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons


def test_the_modern_arch_exports_as_qwen3():
    from gptscratch.hf.modern import check_exportable

    assert check_exportable(resolve_config("modern-demo").model_config()) == "qwen3"
    assert check_exportable(resolve_config("modern-124m").model_config()) == "qwen3"
