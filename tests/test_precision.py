"""The one precision policy: --dtype and the device decide the autocast dtype."""

import pytest
import torch

from gptscratch import precision


@pytest.mark.parametrize("native_bf16", [True, False])
def test_policy_by_setting_and_device(monkeypatch, native_bf16):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native_bf16)
    cpu = torch.device("cpu")
    assert precision.autocast_dtype("float32", cpu) is None
    assert precision.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert precision.autocast_dtype("auto", cpu) is (torch.bfloat16 if native_bf16 else None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert precision.autocast_dtype("float32", torch.device("cuda")) is None


def test_autocast_context_follows_the_dtype():
    cpu = torch.device("cpu")
    with precision.autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16


def spied(model: torch.nn.Module, seen: list) -> torch.nn.Module:
    """`model`, recording into `seen` the autocast dtype each of its forward calls runs under (None: none)."""
    model.register_forward_pre_hook(
        lambda m, a: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    return model


def test_generate_and_hellaswag_run_in_the_dtype_they_are_given():
    from gptscratch.evaluate.hellaswag import Example, ending_losses
    from gptscratch.generate import generate
    from gptscratch.model import GPT, GPTConfig

    torch.manual_seed(0)
    seen: list = []
    model = spied(GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=16)).eval(), seen)
    idx = torch.zeros(1, 3, dtype=torch.long)
    generate(model, idx, 3, temperature=0.0)
    generate(model, idx, 3, temperature=0.0, amp=torch.bfloat16)
    assert seen == [None] * 3 + [torch.bfloat16] * 3
    seen.clear()
    ending_losses(model, [Example("A cat", ["sat.", "ran.", "is.", "x"], 0)], "cpu", amp=torch.bfloat16)
    assert seen == [torch.bfloat16]


def test_train_sample_and_eval_pass_their_dtype_on(monkeypatch, tmp_path, hf_tiny, capsys):
    from gptscratch import cli, evaluate, generate
    from gptscratch.hf import pretrained
    from gptscratch.train import loop as train

    hs = tmp_path / "hs.jsonl"
    hs.write_text('{"ctx": "A cat", "endings": ["sat.", "ran.", "is.", "x"], "label": 0}\n')
    seen: list = []
    real_build, real_load = train.build_model, pretrained.load_model_arg
    # every forward of a run (the steps, val loss, HellaSwag, samples) runs under the run's --dtype
    monkeypatch.setattr(train, "build_model", lambda *a: spied(real_build(*a), seen))
    assert cli.main(["train", "--preset", "tiny", "--device", "cpu", "--data", "tests/fixtures/ckpt_1ae9fdd/data",
                     "--out", str(tmp_path / "run"), "--seq-len", "8", "--batch-size", "2", "--max-steps", "2",
                     "--eval-interval", "1", "--eval-batches", "1", "--hellaswag-interval", "1",
                     "--hellaswag-file", str(hs), "--sample-tokens", "2", "--dtype", "bf16"]) == 0
    assert len(seen) > 6 and set(seen) == {torch.bfloat16}
    # sample (default float32) and eval hellaswag (default auto) under theirs
    for command_module in (generate, evaluate):  # where sample and eval load their model
        monkeypatch.setattr(command_module, "load_model_arg",
                            lambda *a: (lambda model, tok: (spied(model, seen), tok))(*real_load(*a)))
    auto = precision.autocast_dtype("auto", torch.device("cpu"))
    commands = ((["sample", "--max-new-tokens", "2"], None), (["eval", "hellaswag", "--file", str(hs)], auto))
    for command, default in commands:
        for dtype, expected in ((None, default), ("float32", None), ("bf16", torch.bfloat16)):
            seen.clear()
            extra = ["--dtype", dtype] if dtype else []
            assert cli.main([*command, "--hf", str(hf_tiny[1]), "--device", "cpu", *extra]) == 0
            assert seen and set(seen) == {expected}, (command, dtype)
    capsys.readouterr()
