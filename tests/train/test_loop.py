"""train/loop.py: learning, end to end, the val estimate, compile and attention settings, the NaN guard, and
the modern recipe learning and resuming exactly.
"""

import json
import math

import numpy as np
import pytest
import torch

from gptscratch.cli import main
from gptscratch.model import GPT, GPTConfig
from gptscratch.train.config import resolve_config
from gptscratch.train.optim import configure_optimizer
from tests.helpers import TINY, read_metrics, train_losses, write_bundle, write_llmc_shard


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=64))
    opt = configure_optimizer(model, lr=3e-3, weight_decay=0.0)
    x = torch.randint(0, 64, (4, 33))
    first = None
    for _ in range(150):
        _, loss = model(x[:, :-1], x[:, 1:], return_logits=False)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5  # about ln(64) = 4.16 at init
    assert loss.item() < 0.1


def test_compile_mode_and_attention_reach_the_step(shards, tmp_path, monkeypatch):
    import torch.nn.functional as F

    seen, math_only = [], []

    def fake_compile(model, **kwargs):  # inductor's CPU code generation is too slow for a unit test
        seen.append(kwargs)
        return model

    real_sdpa = F.scaled_dot_product_attention

    def spy_sdpa(*args, **kwargs):  # in a training step (grad on), only the math kernel may be enabled
        if torch.is_grad_enabled():
            math_only.append(torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled())
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    assert main(["train", *TINY, "--data", str(shards), "--out", str(tmp_path / "r"), "--max-steps", "1",
                 "--eval-interval", "0", "--compile", "--compile-mode",
                 "max-autotune-no-cudagraphs", "--attention", "math"]) == 0
    assert seen == [{"mode": "max-autotune-no-cudagraphs"}]
    assert math_only and all(math_only)


def test_the_val_estimate_reads_the_same_rows_from_across_the_whole_split(tmp_path):
    """The trainer's val loss must stand for the split, not for its first documents, and compare between
    evaluations and between runs of other seeds: rows drawn from the whole split, the same ones every time."""
    from gptscratch.train.distributed import Dist
    from gptscratch.train.loop import open_data

    d = tmp_path / "data"
    d.mkdir()
    write_llmc_shard(d / "t_train_000000.bin", np.zeros(5_000, dtype=np.int64))
    write_llmc_shard(d / "t_val_000000.bin", np.arange(20_000))  # a token is its own position
    seen = []
    for seed in (1, 2):
        cfg = resolve_config("tiny", {"data": str(d), "seed": seed})
        _, val = open_data(cfg, Dist())
        for _ in range(2):  # the trainer resets the loader before each evaluation
            val.reset()
            seen.append(torch.cat([val.next_batch()[0] for _ in range(cfg.eval_batches)]))
    assert all(torch.equal(s, seen[0]) for s in seen)
    read = cfg.eval_batches * cfg.batch_size * cfg.seq_len
    starts = seen[0][:, 0]
    assert starts.max() > 2 * read  # not only the split's first `read` tokens
    assert starts.min() < 20_000 // 2 < starts.max()


def test_train_end_to_end(shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(out), "--max-steps", "12",
                 "--eval-interval", "6", "--ckpt-interval", "6", "--lr", "3e-3"]) == 0
    printed = capsys.readouterr().out
    assert "--- sample 1 ---" in printed and "gptscratch sample --ckpt" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_steps"] == 12 and cfg["preset"] == "tiny"
    rows = read_metrics(out)
    losses = train_losses(out)
    assert sorted(losses) == list(range(12))
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 6, 11]
    assert losses[11] < losses[0]
    # val bits per byte: the same summed nats over the UTF-8 bytes of the same val rows' targets
    from gptscratch.tokenizer import get_encoding
    from gptscratch.train.config import config_from_dict
    from gptscratch.train.distributed import Dist
    from gptscratch.train.loop import open_data

    _, val = open_data(config_from_dict(cfg), Dist())
    targets = [t for _ in range(cfg["eval_batches"]) for t in val.next_batch()[1].flatten().tolist()]
    text_bytes = sum(len(get_encoding().decode_single_token_bytes(t)) for t in targets)
    last = [r for r in rows if "val_loss" in r][-1]
    assert last["val_bpb"] == pytest.approx(last["val_loss"] * len(targets) / math.log(2) / text_bytes, rel=1e-5)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000006", "step_000012"]
    assert (out / "loss.png").stat().st_size > 1000
    # the checkpoint samples and exports to a directory transformers loads
    from transformers import GPT2LMHeadModel

    assert main(["export", "--ckpt", str(out), "--out", str(tmp_path / "hf")]) == 0
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert hf.config.n_layer == 2
    # HellaSwag on the checkpoint, in the official jsonl schema
    rows = [{"ind": i, "activity_label": "a", "ctx_a": "The cat", "ctx_b": "sat", "ctx": "The cat sat",
             "split": "val", "split_type": "indomain", "label": i % 4, "endings": ["on the mat.", "down.", "up.", "x"],
             "source_id": "s"} for i in range(3)]
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()
    assert main(["eval", "hellaswag", "--ckpt", str(out), "--file", str(tmp_path / "hs.jsonl"), "--json",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
    assert main(["sample", "--ckpt", str(out), "--prompt", "Hello", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


def test_nan_guard_names_a_checkpoint_whose_weights_give_a_finite_loss(shards, tmp_path, capsys):
    run = tmp_path / "run"
    # a learning rate that diverges within a few steps; a checkpoint after every step
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--lr", "100", "--grad-clip", "0",
                 "--warmup-steps", "0", "--ckpt-interval", "1", "--keep", "0", "--eval-interval", "0"]) == 2
    err = capsys.readouterr().err
    # the error stands on its own line, not glued to the progress bar's
    [line] = [ln for ln in err.replace("\r", "\n").splitlines() if "error" in ln]
    assert line.startswith("gptscratch train: error: loss is nan at step ")
    bad_step = int(line.split("at step ")[1].split(";")[0])
    kept = sorted((run / "checkpoints").glob("step_*"))
    assert kept and kept[-1].name == f"step_{bad_step - 1:06d}" and f"last good checkpoint is {kept[-1]}" in line
    from gptscratch.data.loader import TokenLoader
    from gptscratch.train.checkpoint import load_checkpoint

    x, y = TokenLoader(shards, "val", batch_size=4, seq_len=32).next_batch()
    for c in kept:  # every checkpoint left resumes into a finite loss
        _, loss = load_checkpoint(c).load_model()(x, y)
        assert math.isfinite(loss.item()), c




MODERN = ["--preset", "tiny", "--device", "cpu", "--arch", "modern", "--optimizer", "muon", "--schedule", "wsd"]


def test_modern_recipe_learns_and_resumes_exactly(shards, tmp_path, capsys):
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


def test_core_interval_logs_the_core_metric_that_eval_core_gives_the_checkpoint(shards, tmp_path, capsys):
    mc = [{"query": f"Question {i}: which word comes next?", "choices": ["alpha", "beta gamma", "delta"],
           "gold": i % 3} for i in range(8)]
    lm = [{"context": f"Count to {i} and then", "continuation": " stop"} for i in range(6)]
    bundle = write_bundle(tmp_path / "bundle", [("mc", "multiple_choice", 1, " ", None, 33.3),
                                                ("lm", "language_modeling", 0, " ", None, 0.0)], {"mc": mc, "lm": lm})
    out = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(out), "--max-steps", "6", "--core-interval", "3",
                 "--core-bundle", str(bundle), "--core-max-per-task", "5", "--ckpt-interval", "6"]) == 0
    logged = [(r["step"], r["core"]) for r in read_metrics(out) if "core" in r]
    assert [s for s, _ in logged] == [3, 5]  # every 3 steps and before the last
    capsys.readouterr()
    assert main(["eval", "core", "--ckpt", str(out), "--bundle", str(bundle), "--max-per-task", "5", "--json",
                 "--device", "cpu", "--dtype", "float32"]) == 0
    # the last evaluation scores the final weights, which the last checkpoint holds
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["core_metric"] == pytest.approx(
        logged[-1][1], abs=1e-9)


def test_core_interval_under_fsdp_is_refused_in_one_line(capsys):
    assert main(["train", *TINY, "--parallel", "fsdp", "--core-interval", "10"]) == 2
    err = capsys.readouterr().err
    assert "--core-interval with --parallel fsdp" in err and err.count("\n") == 1
