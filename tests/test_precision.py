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
