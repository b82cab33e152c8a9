"""gptscratch's demo against karpathy/nanoGPT's train.py: same shards, same settings, one scorer.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT    # fetched by you; never vendored here
    python -m benchmarks nanogpt --nanogpt /tmp/nanoGPT --seeds 1337,1,2 --shuffle rows,shards

Both trainers get the demo preset's model (layers, heads, width, seq, bias, no dropout), batch, steps,
peak and final lr, warmup, AdamW betas, weight decay and clipping, in float32 on the CPU, without
compile. nanoGPT reads the very tokens of our shards (its train.bin/val.bin are our shards' token
bodies, headers dropped) and draws each row at a random offset, as it always does. Then one scorer
reads both final models: mean cross-entropy over every seq_len window of the whole val split (rows
of seq_len + 1 tokens at stride seq_len), each model through its own forward (nanoGPT's uses exact
GELU, ours GPT-2's tanh form), so neither trainer's own estimate decides. s/step is the median of
each trainer's logged step times (nanoGPT's `iter N: ... time` lines, our metrics.jsonl `dt_ms`).

nanoGPT fixes its seed in train.py (`torch.manual_seed(1337 + seed_offset)`); `--nanogpt-seeds 1337,1,2`
runs its unchanged train.py under a launcher that adds (seed - 1337) to that call, so it too gets several
seeds. Ours runs once per seed and batch order.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.val_scorer import score, score_run, split_tokens
from gptscratch.train.config import PRESETS, resolve_config


def nanogpt_workdir(nanogpt: Path, data: Path, work: Path) -> Path:
    """A directory nanoGPT's train.py can run in: its three files linked, our tokens as data/peer/*.bin."""
    work.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py", "configurator.py"):
        link = work / name
        link.unlink(missing_ok=True)
        link.symlink_to((nanogpt / name).resolve())
    (work / "data" / "peer").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        split_tokens(data, split).astype(np.uint16).tofile(work / "data" / "peer" / f"{split}.bin")
    return work


def nanogpt_args(preset: str, out: Path) -> list[str]:
    cfg = resolve_config(preset)
    settings = dict(
        dataset="peer", out_dir=str(out), device="cpu", dtype="float32", compile=False, wandb_log=False,
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.seq_len, bias=cfg.bias,
        dropout=cfg.dropout, batch_size=cfg.batch_size, gradient_accumulation_steps=1,
        learning_rate=cfg.lr, min_lr=cfg.min_lr, warmup_iters=cfg.warmup_steps, max_iters=cfg.max_steps,
        lr_decay_iters=cfg.max_steps, weight_decay=cfg.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2,
        grad_clip=cfg.grad_clip,
        # one evaluation (at max_iters, after max_iters updates) that saves the checkpoint we score
        eval_interval=cfg.max_steps, eval_iters=1, always_save_checkpoint=True, log_interval=1,
    )
    return [f"--{k}={v}" for k, v in settings.items()]


# runs train.py as `python train.py ARGS` would, with its one torch.manual_seed call shifted
SEED_LAUNCHER = ("import runpy, sys, torch; seed = torch.manual_seed; "
                 "torch.manual_seed = lambda s: seed(s + {offset}); sys.argv[0] = 'train.py'; "
                 "runpy.run_path('train.py', run_name='__main__')")


def run_nanogpt(nanogpt: Path, data: Path, out: Path, preset: str, seed: int = 1337) -> dict:
    work = nanogpt_workdir(nanogpt, data, out / "nanogpt-work")
    ckpt_dir = (out / f"nanogpt-{seed}").resolve()  # train.py runs in `work`
    t0 = time.time()
    launch = ["train.py"] if seed == 1337 else ["-c", SEED_LAUNCHER.format(offset=seed - 1337)]
    log = out / f"nanogpt-{seed}.log"
    if not (ckpt_dir / "ckpt.pt").exists() or not log.exists():  # a finished run is reused
        proc = subprocess.run([sys.executable, *launch, *nanogpt_args(preset, ckpt_dir)], cwd=work,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"nanoGPT's train.py failed:\n{proc.stderr[-3000:]}")
        log.write_text(proc.stdout)
    times = [float(m) for m in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", log.read_text(), re.M)]
    return {"seed": seed, "ckpt": str(ckpt_dir / "ckpt.pt"), "s_per_step": statistics.median(times[1:]) / 1000,
            "wall_s": round(time.time() - t0, 1)}


def run_ours(data: Path, out: Path, preset: str, seed: int, shuffle: str) -> dict:
    run = out / f"ours-{shuffle}-{seed}"
    t0 = time.time()
    cmd = [sys.executable, "-m", "gptscratch", "train", "--preset", preset, "--data", str(data), "--out", str(run),
           "--seed", str(seed), "--shuffle", shuffle, "--device", "cpu"]
    if not (run / "checkpoints").exists():  # a finished run is reused (delete it to train again)
        cmd.append("--overwrite")  # a run killed before its first checkpoint is started again
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"gptscratch train failed:\n{proc.stderr[-3000:]}")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"dt_ms"' in line]
    return {"run": str(run), "s_per_step": statistics.median(s["dt_ms"] for s in steps[1:]) / 1000,
            "wall_s": round(time.time() - t0, 1)}


def load_nanogpt_model(nanogpt: Path, ckpt: str) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = module.GPT(module.GPTConfig(**saved["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()}
    model.load_state_dict(state)
    return model


def run(args: argparse.Namespace) -> int:
    torch.set_grad_enabled(False)
    if not (args.data / "manifest.json").exists():
        from gptscratch.data.prepare import ensure_shakespeare

        ensure_shakespeare(args.data)
    seq_len = resolve_config(args.preset).seq_len
    val = split_tokens(args.data, "val")
    result: dict = {"preset": args.preset, "settings": PRESETS[args.preset], "data": str(args.data), "ours": {}}
    if args.nanogpt:
        peers = []
        for seed in (int(x) for x in args.nanogpt_seeds.split(",")):
            peer = run_nanogpt(args.nanogpt, args.data, args.out, args.preset, seed)
            model = load_nanogpt_model(args.nanogpt, peer["ckpt"]).eval()
            peer["val_loss"], windows = score(lambda x, y, m=model: m(x, y)[0], val, seq_len)
            peers.append(peer)
            print(f"nanoGPT train.py --seed {seed}: val {peer['val_loss']:.4f} over {windows} windows, "
                  f"{peer['s_per_step']:.3f} s/step", flush=True)
        losses = [r["val_loss"] for r in peers]
        result["nanogpt"] = {"runs": peers, "mean": statistics.mean(losses),
                             "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                             "s_per_step": statistics.median(r["s_per_step"] for r in peers)}
    for shuffle in filter(None, args.shuffle.split(",")):
        runs = []
        for seed in (int(s) for s in args.seeds.split(",")):
            ours = run_ours(args.data, args.out, args.preset, seed, shuffle)
            ours["seed"] = seed
            ours["val_loss"] = score_run(Path(ours["run"]), val, seq_len)
            runs.append(ours)
            print(f"gptscratch --shuffle {shuffle} --seed {seed}: val {ours['val_loss']:.4f}, "
                  f"{ours['s_per_step']:.3f} s/step", flush=True)
        losses = [r["val_loss"] for r in runs]
        result["ours"][shuffle] = {"runs": runs, "mean": statistics.mean(losses),
                                   "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                                   "s_per_step": statistics.median(r["s_per_step"] for r in runs)}
        print(f"gptscratch --shuffle {shuffle}: val {result['ours'][shuffle]['mean']:.4f} "
              f"± {result['ours'][shuffle]['std']:.4f} over {len(losses)} seeds")
    print(json.dumps(result))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("nanogpt", help="the demo beside karpathy/nanoGPT's train.py: same shards and settings, "
                       "one val scorer", description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT (omit to run ours only)")
    p.add_argument("--data", type=Path, default=Path("data/shakespeare"))
    p.add_argument("--out", type=Path, default=Path("runs/peer-nanogpt"))
    p.add_argument("--preset", default="demo")
    p.add_argument("--seeds", default="1337,1,2")
    p.add_argument("--shuffle", default="rows", help="our batch orders to run, comma-separated")
    p.add_argument("--nanogpt-seeds", default="1337", help="nanoGPT's seeds (1337 is its own, unpatched)")
    p.set_defaults(func=run)
