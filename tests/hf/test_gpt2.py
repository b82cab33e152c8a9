"""hf/gpt2.py and hf/__init__.py: GPT-2 in and out of transformers' layout (logits equal both ways), export,
and damaged or foreign directories refused in one line.
"""

import json
import os
import pickle

import pytest
import torch
from transformers import GPT2LMHeadModel

from gptscratch.cli import main
from gptscratch.errors import UserError
from gptscratch.hf import load_hf, save_hf
from gptscratch.hf.tokenizer import FILES as TOKENIZER_FILES
from gptscratch.model import GPT, GPTConfig
from gptscratch.train.checkpoint import save_checkpoint


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


def test_pytorch_model_bin_loads_too(hf_tiny, tmp_path):
    from gptscratch.hf import load_hf

    hf, path = hf_tiny
    # the older layout: config.json + a pickled state dict (transformers 5 no longer writes it)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    x = torch.randint(0, 50257, (1, 10))
    with torch.no_grad():
        assert (load_hf(str(tmp_path / "bin"))(x)[0] - hf(x).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("field, value, message", [
    ("n_layer", "2", "n_layer is '2', expected int"),
    ("n_embd", 64.5, "n_embd is 64.5, expected int"),
    ("n_head", True, "n_head is True, expected int"),
    ("layer_norm_epsilon", "1e-5", "layer_norm_epsilon is '1e-5', expected int or float"),
    ("n_inner", "256", "n_inner is '256', expected int or null"),
    ("tie_word_embeddings", "no", "tie_word_embeddings is 'no', expected bool"),
    ("n_layer", -1, "model config n_layer=-1: expected a positive integer"),
])
def test_hf_config_with_fields_of_the_wrong_type_fails_in_one_line(hf_tiny, capsys, field, value, message):
    _, path = hf_tiny
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, field: value}))
    assert main(["sample", "--hf", str(path), "--max-new-tokens", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{path / 'config.json'}: {message}" in err and err.count("\n") == 1


def test_a_malicious_pickle_from_hf_is_refused_in_one_line(hf_tiny, tmp_path, capsys):
    _, path = hf_tiny
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((path / "config.json").read_text())
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(Evil(), protocol=2))  # torch.save's protocol
    assert main(["sample", "--hf", str(evil), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded as a weights-only PyTorch file" in err and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists()


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_export_refuses_a_non_empty_out_and_replaces_an_earlier_export_whole(tmp_path, capsys):
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(tmp_path / "run" / "checkpoints", 1, model, torch.optim.AdamW(model.parameters()), {}, [{}],
                    [{}])
    ckpt = str(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert main(["export", "--ckpt", ckpt, "--out", str(mine)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "--ckpt", ckpt, "--out", str(mine), "--overwrite"]) == 2  # not an earlier export
    assert "holds no config.json" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    out = tmp_path / "hf"
    assert main(["export", "--ckpt", ckpt, "--out", str(out)]) == 0
    (out / "stale.bin").write_text("from an older export")
    assert main(["export", "--ckpt", ckpt, "--out", str(out)]) == 2
    assert main(["export", "--ckpt", ckpt, "--out", str(out), "--overwrite"]) == 0
    # the weights and the tokenizer's files, nothing stale beside them
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "model.safetensors", *TOKENIZER_FILES])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directory left
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for target, message in ((blocker, "exists and is not a directory"), (blocker / "hf", "Not a directory")):
        capsys.readouterr()
        assert main(["export", "--ckpt", ckpt, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
