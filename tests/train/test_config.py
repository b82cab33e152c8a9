"""train/config.py: the flags, presets and --arch, every number's range (NaN and inf included) and every
field's type.

Chat data and SFT: `prepare --chat`, the loader's targets on packed conversations, training on the assistant's
tokens only, `eval loss` on conversations, `gptscratch chat`, and the effect: after SFT, greedy replies follow a
rule the model could not have guessed, which the same model before SFT does not.

References are independent of the code under test: token streams are read back with numpy at llm.c's offsets,
which tokens the assistant wrote comes from a state machine written here, and losses from plain cross-entropy.
"""

import dataclasses
import math
import typing

import pytest

from gptscratch.chat import CHAT_VOCAB_SIZE
from gptscratch.cli import build_parser, main, parse_args
from gptscratch.errors import UserError
from gptscratch.tokenizer import VOCAB_SIZE
from gptscratch.train.config import ARCHS, TrainConfig, config_from_dict, given_settings, resolve_config
from tests.helpers import TINY


def settings(*argv: str) -> dict:
    return given_settings(parse_args(build_parser(), ["train", *argv]))


def outside(meta: dict, kind: type) -> list:
    """Values just outside each bound a field declares."""
    step = 1 if kind is int else 0.5
    values = []
    if "min" in meta:
        values.append(meta["min"] - step)
    if "above" in meta:
        values.append(meta["above"])
    if "max" in meta:
        values.append(meta["max"] + step)
    if "below" in meta:
        values.append(meta["below"])
    return [kind(v) for v in values]


def test_overrides_accept_dashes_and_underscores():
    assert settings("--max-steps", "20", "--max_steps=30", "--compile") == {"max_steps": 30, "compile": "true"}
    assert settings("--lr", "1e-3", "--shuffle", "none") == {"lr": 1e-3, "shuffle": "none"}
    assert settings("--no-tie-embeddings", "--bias=false", "--qk-norm", "--compile", "false") == {
        "tie_embeddings": False, "bias": False, "qk_norm": True, "compile": "false"}
    assert settings("--sample_prompt=--x_y", "--dtype=bf16") == {"sample_prompt": "--x_y", "dtype": "bf16"}
    assert settings() == {}  # nothing given: the preset (or a resumed run's config) decides
    with pytest.raises(UserError, match="valid presets: demo"):
        resolve_config("gpt5")
    with pytest.raises(UserError, match="--loss-impl 'fused': expected one of auto, chunked, full"):
        TrainConfig(loss_impl="fused")  # a config made in Python is checked the same way


def test_train_help_explains_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in out
    assert "{auto,float32,bf16}" in out and "--qk-norm [true|false], --no-qk-norm" in out
    assert "AdamW beta2 (default 0.95)" in out and "inductor fuses (2% faster" in out
    assert "demo: --dtype float32 --n-layer 4" in out and "--max-steps 300" in out  # what each preset sets


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "fp16"], "argument --dtype: invalid choice: 'fp16' (choose from"),
    (["--preset", "nope"], "argument --preset: invalid choice: 'nope' (choose from"),
    (["--max-steps", "x"], "argument --max-steps: invalid int value: 'x'"),
    (["--shuffle", "maybe"], "argument --shuffle: invalid choice: 'maybe' (choose from"),
    (["--bias", "maybe"], "expected true or false, got 'maybe'"),
    (["--max-stepz", "3"], "unrecognized arguments: --max-stepz 3; did you mean --max-steps?"),
])
def test_bad_flags_are_refused_by_the_parser_in_one_line(capsys, argv, message):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptscratch train: error:") and message in err and err.count("\n") == 1


def test_presets_hold_the_gpt2_recipe():
    cfg = resolve_config("gpt2-124m")
    assert (cfg.batch_size, cfg.seq_len, cfg.total_batch_tokens) == (64, 1024, 524_288)
    assert cfg.model_config().padded_vocab_size == 50304
    assert (cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps) == (6e-4, pytest.approx(6e-5), 715, 19_073)
    assert (cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.grad_clip) == (0.9, 0.95, 1e-8, 0.1, 1.0)
    xl = resolve_config("gpt2-1558m")
    assert (xl.n_layer, xl.n_embd, xl.lr, xl.total_batch_tokens) == (48, 1600, 2e-4, 1_048_576)


def test_bad_settings_fail_with_one_line(shards, tmp_path, capsys):
    assert main(["train", *TINY, "--data", str(shards), "--out", str(tmp_path / "r"),
                 "--total-batch-tokens", "1000"]) == 2
    assert "not a multiple of batch_size * seq_len" in capsys.readouterr().err
    assert main(["train", *TINY, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "gptscratch prepare" in capsys.readouterr().err
    assert main(["train", "--preset", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert main(["train", *TINY, "--data", str(shards), "--compile-mode", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "argument --compile-mode: invalid choice: 'fastest'" in err and "max-autotune-no-cudagraphs" in err
    assert main(["train", *TINY, "--data", str(shards), "--attention", "cudnn"]) == 2
    assert "--attention cudnn: that kernel runs on CUDA only" in capsys.readouterr().err


def test_every_numeric_setting_declares_its_range_and_is_held_to_it():
    hints = typing.get_type_hints(TrainConfig)
    assert [f.name for f in dataclasses.fields(TrainConfig) if hints[f.name] in (int, float)
            and not {"min", "above", "max", "below"} & set(f.metadata)] == []
    checked = 0
    for f in dataclasses.fields(TrainConfig):
        kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}.get(f.type)
        if kind not in (int, float):
            continue
        bad = outside(f.metadata, kind) + ([math.nan, math.inf, -math.inf] if kind is float else [])
        assert bad, f.name
        for value in bad:
            with pytest.raises(UserError, match=f"--{f.name.replace('_', '-')} "):
                resolve_config("tiny", {f.name: value})
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr nan: expected a finite number > 0"),
    (["--lr", "inf"], "--lr inf: expected a finite number > 0"),
    (["--dropout", "2"], "--dropout 2.0: expected a finite number >= 0 and < 1"),
    (["--beta1", "2"], "--beta1 2.0: expected a finite number >= 0 and < 1"),
    (["--log-interval", "0"], "--log-interval 0: expected an integer >= 1"),
    (["--seed", "-1"], "--seed -1: expected an integer >= 0"),
    (["--eval-batches", "0"], "--eval-batches 0: expected an integer >= 1"),
    (["--warmup-steps", "-5"], "--warmup-steps -5: expected an integer >= 0"),
])
def test_out_of_range_flags_end_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptscratch train: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_saved_config_with_fields_of_the_wrong_type_is_refused():
    good = dataclasses.asdict(resolve_config("tiny"))
    assert config_from_dict(good) == resolve_config("tiny")
    for name, value in [("lr", "fast"), ("n_layer", 2.5), ("n_layer", True), ("bias", 1), ("data", 3),
                        ("shuffle", ["rows"]), ("max_steps", None)]:
        with pytest.raises(UserError, match=f"--{name.replace('_', '-')} "):
            config_from_dict({**good, name: value})
    assert config_from_dict({**good, "lr": 1}).lr == 1  # JSON may write a whole float as an int






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






def test_a_config_saved_before_chat_existed_is_a_base_models():
    saved = {k: v for k, v in vars(resolve_config("tiny")).items() if k != "chat"}
    cfg = config_from_dict(saved)
    assert cfg.chat is False and cfg.model_config().vocab_size == VOCAB_SIZE
    assert resolve_config("sft").model_config().vocab_size == CHAT_VOCAB_SIZE
