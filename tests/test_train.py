"""Training: schedule, decay groups, learning, end to end, exact resume after SIGKILL, DDP equivalence."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gptscratch import testing
from gptscratch.cli import build_parser, main, parse_args
from gptscratch.errors import UserError
from gptscratch.model import GPT, GPTConfig
from gptscratch.train.config import TrainConfig, given_settings, resolve_config
from gptscratch.train.optim import configure_optimizer, lr_at, param_groups

TINY = ["--preset", "tiny", "--device", "cpu"]  # the default batch order: rows


def write_llmc_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


@pytest.fixture
def shards(tmp_path):
    """A directory of llm.c shards of random tokens: 20k train, 4k val."""
    rng = np.random.default_rng(0)
    d = tmp_path / "data"
    d.mkdir()
    # a low-entropy stream (tokens from a small set) so that a few steps visibly learn
    write_llmc_shard(d / "tiny_train_000000.bin", rng.integers(0, 300, 20_000))
    write_llmc_shard(d / "tiny_val_000000.bin", rng.integers(0, 300, 4_000))
    return d


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def gptscratch(*args, env=None, **kw):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "gptscratch", *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


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


def settings(*argv: str) -> dict:
    return given_settings(parse_args(build_parser(), ["train", *argv]))


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


def halted(p: subprocess.Popen) -> str:
    """Read p's stderr until p halts at its test hook (testing.halt); what it printed until then.

    The process stays halted until killed, so whatever happens next happens at exactly that moment,
    however slowly a loaded machine runs it; no sleep or poll decides it.
    """
    seen = []
    watchdog = threading.Timer(600, p.kill)  # a process that hangs before the hook fails the test, not CI
    watchdog.start()
    try:
        for line in p.stderr:
            seen.append(line)
            if testing.HALTED in line:
                return "".join(seen)
    finally:
        watchdog.cancel()
    p.wait()
    raise AssertionError(f"exit {p.returncode} before the test hook:\n" + "".join(seen)[-3000:])


def test_sigkill_and_resume_gives_identical_losses(shards, tmp_path):
    common = [*TINY, "--data", str(shards), "--max-steps", "16", "--ckpt-interval", "4", "--eval-interval", "8",
              "--dtype", "float32"]  # exactness is promised for float32 on a CPU
    ref = tmp_path / "ref"
    p = gptscratch("train", *common, "--out", str(ref))
    assert p.wait(timeout=300) == 0, p.stderr.read()

    run = tmp_path / "killed"
    p = gptscratch("train", *common, "--out", str(run), env={testing.HALT: "step:10"})
    halted(p)  # steps 0-9 done, checkpoint 8 written
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert sorted(c.name for c in (run / "checkpoints").iterdir()) == ["step_000004", "step_000008"]
    assert max(train_losses(run)) == 9
    p = gptscratch("train", *common, "--out", str(run), "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    # A resume bug (a skipped or repeated batch, a lost optimizer state, the wrong lr step) moves losses by
    # ~1e-3 and weights by ~lr = 1e-3; the tolerances below are 100x tighter than that. They are not zero
    # because in about one full CI run in three a logged loss after a restart or a checkpoint differed in
    # its 7th digit while every later loss, and so the weights, stayed bit-identical (a float32 reduction
    # in torch's CPU kernels; see the issue notes). Bit-for-bit is what we see otherwise, and is reported.
    ours, theirs = train_losses(run), train_losses(ref)
    assert sorted(ours) == sorted(theirs) == list(range(16))
    assert ours == pytest.approx(theirs, rel=1e-5, abs=0)
    val = [r["val_loss"] for r in read_metrics(run) if "val_loss" in r]
    assert val == pytest.approx([r["val_loss"] for r in read_metrics(ref) if "val_loss" in r], rel=1e-5, abs=0)
    from gptscratch.io import read_safetensors

    final = read_safetensors(run / "checkpoints" / "step_000016" / "model.safetensors")
    expected = read_safetensors(ref / "checkpoints" / "step_000016" / "model.safetensors")
    assert final.keys() == expected.keys()
    assert max((final[k] - expected[k]).abs().max().item() for k in final) <= 1e-5
    if ours != theirs or any(not torch.equal(final[k], expected[k]) for k in final):
        warnings.warn("resume matched within float32 rounding but not bit for bit this time", stacklevel=1)


def test_kill_during_checkpoint_write_keeps_previous_and_the_lock_holds_until_then(shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--max-steps", "8", "--ckpt-interval", "4"]
    p = gptscratch("train", *args, env={testing.HALT: "checkpoint:8"})
    halted(p)  # checkpoint 4 complete, checkpoint 8 half written
    ckpts = run / "checkpoints"
    assert (ckpts / "step_000004").exists() and len(list(ckpts.glob(".tmp-step_000008-*"))) == 1
    # while it lives, the run owns its directory: a second run, new or resumed, fails at once naming it
    for extra in ([], ["--resume"], ["--overwrite"]):
        assert main(["train", *args, *extra]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another training run (pid {p.pid})" in err and err.count("\n") == 1
    assert len(list(ckpts.glob(".tmp-step_000008-*"))) == 1  # a refused run sweeps nothing
    p.send_signal(signal.SIGKILL)
    p.wait()
    from gptscratch.train.checkpoint import load_checkpoint

    saved = load_checkpoint(run)
    assert saved.step == 4
    saved.load_model()  # the weights are complete
    # the OS dropped the killed run's lock: a resumed run takes the directory, sweeps the half-written
    # checkpoint and finishes
    p = gptscratch("train", *args, "--resume")
    assert p.wait(timeout=300) == 0, p.stderr.read()
    assert load_checkpoint(run).step == 8
    assert sorted(c.name for c in ckpts.iterdir()) == ["step_000004", "step_000008"]


def test_checkpoint_of_another_shape_is_refused(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "4", "--resume",
                 "--n-embd", "64"]) == 2
    assert "n_embd: checkpoint 32, run 64" in capsys.readouterr().err
    (run / "checkpoints" / "step_000002" / "model.safetensors").write_bytes(b"garbage")
    assert main(["sample", "--ckpt", str(run), "--device", "cpu"]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def assert_ddp_equals_accumulation(common: list[str], tmp_path: Path) -> None:
    """2 torchrun processes (gloo) train as 1 process with 2 accumulation steps: the same losses and weights."""
    single = gptscratch("train", *common, "--out", str(tmp_path / "one"))
    assert single.wait(timeout=300) == 0, single.stderr.read()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun binds its own free port and keeps it; a port picked here and released would
    # be free to another process before torchrun binds it (a test that failed under load)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptscratch",
         "train", *common, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    from gptscratch.train.checkpoint import load_model

    a = load_model(tmp_path / "one").state_dict()
    b = load_model(tmp_path / "two").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert train_losses(tmp_path / "one").keys() == train_losses(tmp_path / "two").keys()
    for s, loss in train_losses(tmp_path / "one").items():
        assert train_losses(tmp_path / "two")[s] == pytest.approx(loss, abs=1e-5)


def test_ddp_two_processes_equal_one_process_with_accumulation(shards, tmp_path):
    common = [*TINY, "--data", str(shards), "--max-steps", "3", "--batch-size", "2", "--dtype", "float32",
              "--total-batch-tokens", "128",
              "--eval-interval", "0", "--num-samples", "1", "--sample-tokens", "1"]
    assert_ddp_equals_accumulation(common, tmp_path)


def test_keep_holds_only_the_newest_checkpoints(shards, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "8", "--ckpt-interval", "2",
                 "--keep", "2", "--eval-interval", "0", "--sample-tokens", "1"]) == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000006", "step_000008"]


# --- the run directory: one owner, resume writes only where it should --------------------------


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (the lock file aside)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "train.lock"}


def test_a_new_run_refuses_a_directory_that_holds_a_run(shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--max-steps", "4", "--ckpt-interval", "2",
            "--eval-interval", "0", "--sample-tokens", "1"]
    assert main(["train", *args]) == 0
    before = tree(run)
    capsys.readouterr()
    assert main(["train", *args, "--lr", "1e-4"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (checkpoints/step_000004)" in err and "--resume" in err and "--overwrite" in err
    assert err.count("\n") == 1 and tree(run) == before  # nothing written, nothing removed
    # --overwrite replaces it: the old run's checkpoints go, the new run's alone remain
    assert main(["train", *args, "--max-steps", "3", "--overwrite"]) == 0
    assert "--overwrite: removed the run that was in" in capsys.readouterr().err
    assert sorted(c.name for c in (run / "checkpoints").iterdir()) == ["step_000002", "step_000003"]
    assert sorted(train_losses(run)) == [0, 1, 2]
    # a run killed before its first checkpoint left only config.json and metrics: --resume starts it again
    for c in (run / "checkpoints").iterdir():
        shutil.rmtree(c)
    assert main(["train", *args, "--max-steps", "2"]) == 2
    assert "already holds a run (config.json)" in capsys.readouterr().err
    assert main(["train", *args, "--max-steps", "2", "--resume"]) == 0
    assert sorted(train_losses(run)) == [0, 1]


def test_resume_writes_only_into_the_named_directory(shards, tmp_path, capsys):
    args = [*TINY, "--data", str(shards), "--max-steps", "4", "--ckpt-interval", "2", "--eval-interval", "0",
            "--sample-tokens", "1"]
    victim, run = tmp_path / "victim", tmp_path / "run"
    assert main(["train", *args, "--out", str(victim)]) == 0
    assert main(["train", *args, "--out", str(run)]) == 0
    untouched = tree(victim)
    # a crafted (or copied) checkpoint whose saved config points elsewhere
    state_path = run / "checkpoints" / "step_000002" / "state.json"
    state = json.loads(state_path.read_text())
    state["config"]["out"] = str(victim)
    state_path.write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["train", "--resume", str(state_path.parent), "--max-steps", "6"]) == 0
    assert tree(victim) == untouched
    assert json.loads((run / "config.json").read_text())["out"] == str(run)
    assert load_checkpoint_step(run) == 6
    # resumed into another directory that holds a run: refused unless --overwrite
    assert main(["train", "--resume", str(state_path.parent), "--out", str(victim)]) == 2
    assert "already holds a run (checkpoints/step_000004) other than" in capsys.readouterr().err
    assert tree(victim) == untouched
    # a different preset on --resume would be recorded without taking effect: refused
    assert main(["train", "--resume", "--out", str(run), "--preset", "demo"]) == 2
    assert "--preset demo: " in capsys.readouterr().err


def load_checkpoint_step(run: Path) -> int:
    from gptscratch.train.checkpoint import load_checkpoint

    return load_checkpoint(run).step


def test_a_resume_already_at_max_steps_says_the_run_is_complete_and_names_its_checkpoint(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "2", "--eval-interval", "0",
                 "--sample-tokens", "1"]) == 0
    before = tree(run)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"complete at step 2 (--max-steps 2); its checkpoint is {run / 'checkpoints' / 'step_000002'}." in out
    assert "None" not in out
    assert tree(run) == before  # nothing to train, so nothing written


def test_resuming_an_older_step_sets_the_newer_timeline_aside(shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--ckpt-interval", "2", "--keep", "0",
            "--eval-interval", "0", "--sample-tokens", "1"]
    assert main(["train", *args, "--max-steps", "8"]) == 0
    old_metrics = read_metrics(run)
    old_step6 = tree(run / "checkpoints" / "step_000006")
    capsys.readouterr()
    assert main(["train", *args, "--max-steps", "6", "--lr", "2e-3", "--resume",
                 str(run / "checkpoints" / "step_000004")]) == 0
    err = capsys.readouterr().err
    [aside] = (run / "checkpoints").glob("abandoned-*")
    assert f"moved the newer checkpoints and metrics to {aside}" in err
    assert sorted(c.name for c in (run / "checkpoints").glob("step_*")) == [
        "step_000002", "step_000004", "step_000006"]
    # the abandoned timeline, whole: its checkpoints, its metrics from step 4 on, its config
    assert sorted(p.name for p in aside.iterdir()) == ["config.json", "metrics.jsonl", "step_000006", "step_000008"]
    assert tree(aside / "step_000006") == old_step6
    assert read_metrics(aside) == [r for r in old_metrics if r["step"] >= 4]
    assert json.loads((aside / "config.json").read_text())["lr"] == 1e-3
    # the run's own metrics: the old steps before 4, then the new timeline
    ours = read_metrics(run)
    assert [r for r in ours if r["step"] < 4] == [r for r in old_metrics if r["step"] < 4]
    assert sorted(train_losses(run)) == list(range(6))


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


def test_disk_full_while_writing_a_checkpoint_ends_in_one_line_and_leaves_no_partial_one(shards, tmp_path, capsys,
                                                                                        monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real_save, calls = safetensors.torch.save_file, []

    def full_on_second(*args, **kwargs):  # what safetensors raises when the disk is full
        calls.append(1)
        if len(calls) == 2:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_on_second)
    run = tmp_path / "run"
    args = [*TINY, "--data", str(shards), "--out", str(run), "--max-steps", "4", "--ckpt-interval", "2",
            "--eval-interval", "0", "--sample-tokens", "1"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "error: cannot write" in err and "step_000004: No space left on device" in err
    assert err.splitlines()[-1].startswith("gptscratch train: error:") and "Traceback" not in err
    assert [c.name for c in (run / "checkpoints").iterdir()] == ["step_000002"]  # no partial directory
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    assert main(["train", *args, "--resume"]) == 0
    assert load_checkpoint_step(run) == 4


def test_an_out_that_cannot_be_written_ends_in_one_line(shards, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out, message in ((blocker, "exists and is not a directory"), (blocker / "run", "Not a directory")):
        assert main(["train", *TINY, "--data", str(shards), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert main(["train", *TINY, "--data", str(shards), "--out", str(ro / "run")]) == 2
        assert "Permission denied" in capsys.readouterr().err
    import gptscratch.train.rundir

    def read_only(*args):  # a read-only mount, which root meets too
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(gptscratch.train.rundir.os, "open", read_only)
    assert main(["train", *TINY, "--data", str(shards), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'run' / 'train.lock'}: Read-only file system" in err and err.count("\n") == 1


def test_a_locked_run_dir_stops_every_torchrun_rank(shards, tmp_path):
    from gptscratch.train.rundir import RunLock

    run = tmp_path / "run"
    lock = RunLock(run)  # this process owns it
    try:
        ddp = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptscratch",
             "train", *TINY, "--data", str(shards), "--out", str(run), "--max-steps", "2"],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
        )
    finally:
        lock.release()
    assert ddp.returncode != 0
    message = f"is in use by another training run (pid {os.getpid()})"
    assert ddp.stderr.count(message) == 2, ddp.stderr[-3000:]  # each rank stopped on it, none waited
    assert not (run / "config.json").exists()
