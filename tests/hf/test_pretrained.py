"""hf/pretrained.py: --init-from (HF GPT-2, a Qwen3 export, a checkpoint) and the finetune preset."""

import json

import pytest
import torch
import torch.nn.functional as F

from gptscratch.cli import main
from gptscratch.data.loader import TokenLoader
from gptscratch.hf import load_hf, save_hf
from gptscratch.model import GPT, GPTConfig
from tests.helpers import read_metrics, train_losses

transformers = pytest.importorskip("transformers")
FT = ["--preset", "finetune", "--device", "cpu", "--dtype", "float32", "--seq-len", "32", "--batch-size", "4",
      "--max-steps", "6", "--eval-interval", "3", "--eval-batches", "2", "--ckpt-interval", "3", "--sample-tokens",
      "2", "--num-samples", "1"]


def test_init_from_hf_starts_from_its_weights_and_exports_back(hf_tiny, corpus, tmp_path, capsys):
    hf, path = hf_tiny
    out = tmp_path / "ft"
    assert main(["train", *FT, "--init-from", str(path), "--data", str(corpus), "--out", str(out), "--dropout", "0",
                 "--vocab-multiple", "1"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["n_layer"], saved["n_head"], saved["n_embd"], saved["block_size"]) == (2, 4, 64, 64)  # the source's
    # the first step's loss is the source model's loss on the first batch, computed by transformers
    x, y = TokenLoader(corpus, "train", 4, 32, seed=saved["seed"], shuffle="rows").next_batch()
    with torch.no_grad():
        want = F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten()).item()
    assert train_losses(out)[0] == pytest.approx(want, abs=1e-4)
    record = [r for r in read_metrics(out) if "init_val_loss" in r]
    assert len(record) == 1 and record[0]["final_val_loss"] < record[0]["init_val_loss"]
    assert "fine-tuning from" in capsys.readouterr().out
    assert main(["export", "--ckpt", str(out), "--out", str(tmp_path / "hf")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert back.config.n_layer == 2


def test_finetune_resume_is_exact(hf_tiny, corpus, tmp_path):
    _, path = hf_tiny
    args = [*FT, "--init-from", str(path), "--data", str(corpus)]
    assert main(["train", *args, "--out", str(tmp_path / "ref")]) == 0
    middle = tmp_path / "ref" / "checkpoints" / "step_000003"
    # resuming reads the run's own weights: the source may be gone by then, and the same command line (its
    # --init-from included) continues the run, as a relaunched preemptible job does
    path.rename(tmp_path / "gone")
    assert main(["train", *args, "--out", str(tmp_path / "cut"), "--resume", str(middle)]) == 0
    ref, cut = train_losses(tmp_path / "ref"), train_losses(tmp_path / "cut")
    assert cut == pytest.approx({s: ref[s] for s in range(3, 6)}, rel=1e-5, abs=0)


def test_init_from_a_qwen3_export_and_from_a_checkpoint(corpus, tmp_path):
    torch.manual_seed(0)
    modern = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=64, bias=False, pos_embedding="rope",
                           norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False))
    save_hf(modern, tmp_path / "qwen3")
    back = load_hf(str(tmp_path / "qwen3"))  # the export reads back as the same model
    x = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        assert (back(x)[0][..., :50257] - modern(x)[0][..., :50257]).abs().max() <= 1e-5
    assert main(["train", *FT, "--init-from", str(tmp_path / "qwen3"), "--data", str(corpus),
                 "--out", str(tmp_path / "a")]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (cfg["pos_embedding"], cfg["qk_norm"], cfg["mlp"], cfg["arch"]) == ("rope", True, "swiglu", "modern")
    # a gptscratch checkpoint is a source too: continue fine-tuning run a as a new run b
    assert main(["train", *FT, "--init-from", str(tmp_path / "a"), "--data", str(corpus),
                 "--out", str(tmp_path / "b")]) == 0
    val_a = [r["val_loss"] for r in read_metrics(tmp_path / "a") if "val_loss" in r]
    first_b = [r["val_loss"] for r in read_metrics(tmp_path / "b") if "val_loss" in r][0]
    assert first_b < val_a[0]  # b starts from a's trained weights, not from the export's
    assert first_b == pytest.approx(val_a[-1], abs=0.05)  # (a's last eval is one step before its end)


def test_bad_init_from_is_one_line(hf_tiny, corpus, tmp_path, capsys):
    _, path = hf_tiny
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = [
        (["--init-from", str(tmp_path / "nothing")], "no such directory"),
        (["--init-from", str(tmp_path / "bert")], "model_type is 'bert'"),
        (["--init-from", str(path), "--seq-len", "128"], "exceeds the context of --init-from"),
        (["--init-from", str(path), "--n-layer", "3"], "--n-layer 3 contradicts --init-from"),
        (["--init-from", str(path), "--arch", "modern"], "--arch modern contradicts"),
    ]
    for extra, message in cases:
        assert main(["train", *FT, "--data", str(corpus), "--out", str(tmp_path / "x"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
