"""The training config's checks: every number's range (NaN and inf included) and every field's type."""

import dataclasses
import math
import typing

import pytest

from gptscratch.cli import main
from gptscratch.errors import UserError
from gptscratch.train.config import TrainConfig, config_from_dict, resolve_config


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
