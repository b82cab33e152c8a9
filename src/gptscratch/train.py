"""The training loop: one CPU, one GPU, or many GPUs under torchrun, with exact resume.

The loop is a function over explicit state (model, optimizer, loaders, step). Resuming loads each
piece's state_dict(), including every rank's loader position and RNG state, so a run that is killed
and resumed computes the same losses, step for step, as one that never stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gptscratch import checkpoint as ckpt
from gptscratch import testing
from gptscratch.config import (
    CUDAGRAPH_MODES,
    PRESETS,
    TrainConfig,
    config_from_dict,
    grad_accum_steps,
    parse_overrides,
    resolve_config,
    validate,
)
from gptscratch.device import attention_backend, pick_device
from gptscratch.errors import UserError
from gptscratch.hf import load_hf
from gptscratch.mfu import flops_per_token
from gptscratch.model import GPT
from gptscratch.optim import build_optimizer, lr_at
from gptscratch.paths import DEFAULT_DATA
from gptscratch.precision import allow_tf32, autocast, autocast_dtype


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set): NCCL on CUDA, gloo on CPU; else one process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist(), pick_device(device_name)
    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return d, device


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.compile == "true" or (cfg.compile == "auto" and device.type == "cuda")


def chunked_loss(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.loss_impl == "chunked" or (cfg.loss_impl == "auto" and device.type != "cuda")


def all_reduce_mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / d.world_size
    return value


def gather(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not d.enabled:
        return [obj]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as it happens."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path = path
        self.enabled = enabled
        if enabled and resume_step is not None and path.exists():
            # drop what the interrupted run logged after its checkpoint: the resumed run logs it again
            keep = [ln for ln in path.read_text().splitlines() if _step_of(ln) < resume_step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, path)
        elif enabled:
            path.write_text("")

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _step_of(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


@torch.no_grad()
def estimate_val_loss(model: GPT, loader, batches: int, device, amp: torch.dtype | None, d: Dist) -> float:
    model.eval()
    loader.reset()  # the same val batches every time, so evaluations compare
    total = torch.zeros((), device=device)
    for _ in range(batches):
        x, y = loader.next_batch()
        x, y = x.to(device), y.to(device)
        with autocast(device, amp):
            _, loss = model(x, y, return_logits=False, amp=amp)
        total += loss.detach().float()
    model.train()
    return float(all_reduce_mean(total / batches, d))


def samples(model: GPT, cfg: TrainConfig, device, amp: torch.dtype | None) -> list[str]:
    from gptscratch.generate import generate
    from gptscratch.tokenizer import get_encoding

    enc = get_encoding()
    prompt = enc.encode(cfg.sample_prompt, allowed_special={"<|endoftext|>"}) or [enc.eot_token]
    idx = torch.tensor([prompt] * cfg.num_samples, dtype=torch.long, device=device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    out = generate(model, idx, cfg.sample_tokens, temperature=1.0, top_k=50, generator=g, amp=amp)
    return [enc.decode([t for t in row if t < enc.n_vocab]) for row in out.tolist()]


def open_data(cfg: TrainConfig, d: Dist):
    from gptscratch.data.loader import TokenLoader

    data = Path(cfg.data)
    if not (data / "manifest.json").exists() and not any(data.glob("*.bin")):
        if cfg.data == DEFAULT_DATA:
            if d.master:
                from gptscratch.data.prepare import ensure_shakespeare

                ensure_shakespeare(data)
            if d.enabled:
                dist.barrier()
        elif not data.exists():
            raise UserError(f"--data {data}: no such directory; make one with `gptscratch prepare SOURCE --out {data}`")
        else:
            raise UserError(
                f"--data {data}: holds no token shards; make them with `gptscratch prepare SOURCE --out {data}`"
            )
    train = TokenLoader(data, "train", batch_size=cfg.batch_size, seq_len=cfg.seq_len, rank=d.rank,
                        world_size=d.world_size, seed=cfg.seed, shuffle=cfg.shuffle)
    val = TokenLoader(data, "val", batch_size=cfg.batch_size, seq_len=cfg.seq_len, rank=d.rank,
                      world_size=d.world_size, seed=cfg.seed, shuffle="none")
    return train, val


def load_hellaswag(cfg: TrainConfig):
    if cfg.hellaswag_interval <= 0:
        return None
    from gptscratch.evaluate.hellaswag import default_file, load_examples

    try:
        path = Path(cfg.hellaswag_file) if cfg.hellaswag_file else default_file("val")
    except UserError as e:
        raise UserError(f"{e} (or train with --hellaswag-interval 0)") from None
    return load_examples(path, limit=cfg.hellaswag_limit or None)


def build_model(cfg: TrainConfig) -> GPT:
    if cfg.init_from:
        model = load_hf(cfg.init_from, vocab_multiple=cfg.vocab_multiple)
        if model.config.block_size < cfg.seq_len:
            raise UserError(
                f"--seq-len {cfg.seq_len} exceeds {cfg.init_from}'s block size {model.config.block_size}"
            )
        return model
    return GPT(cfg.model_config())


def check_resume_shape(model: GPT, saved: ckpt.Checkpoint) -> None:
    if asdict(saved.model_config) != asdict(model.config):
        diff = {k: (v, getattr(model.config, k)) for k, v in asdict(saved.model_config).items()
                if getattr(model.config, k) != v}
        desc = ", ".join(f"{k}: checkpoint {a}, run {b}" for k, (a, b) in diff.items())
        raise UserError(f"{saved.path}: the checkpoint's model differs from this run's ({desc})")


def train(cfg: TrainConfig, resume: str | None = None) -> dict:
    """Train per `cfg`; `resume` is a checkpoint (a step, checkpoints/ or run directory) or None."""
    validate(cfg)
    d, device = init_distributed(cfg.device)
    try:
        return _train(cfg, resume, d, device)
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: str | None, d: Dist, device: torch.device) -> dict:
    run_dir = Path(cfg.run_dir())
    ckpt_dir = run_dir / "checkpoints"
    saved = ckpt.load_checkpoint(resume) if resume else None
    if saved is not None and saved.world_size != d.world_size and d.master:
        print(f"gptscratch train: {saved.path} was saved by {saved.world_size} process(es), resumed with "
              f"{d.world_size}: the data position carries over, but the run is not bit-identical to an "
              "uninterrupted one", file=sys.stderr)
    accum = grad_accum_steps(cfg, d.world_size)  # fails before any work when the batch cannot divide
    torch.manual_seed(cfg.seed + d.rank)
    allow_tf32(device)
    amp = autocast_dtype(cfg.dtype, device)
    chunked = chunked_loss(cfg, device)
    attention_backend(cfg.attention, device)  # fails here, before any work, on a kernel this device lacks
    hellaswag = load_hellaswag(cfg)
    train_loader, val_loader = open_data(cfg, d)

    model = build_model(cfg)
    if saved is not None:
        check_resume_shape(model, saved)
        ckpt.load_weights(model, saved.path / "model.safetensors")
    model.to(device)
    raw_model = model  # evaluation and sampling use the plain module: no recompiles on odd shapes
    optimizer = build_optimizer(raw_model, cfg, device.type)
    start = 0
    if saved is not None:
        if saved.config.get("optimizer", "adamw") != cfg.optimizer:
            raise UserError(f"{saved.path}: trained with --optimizer {saved.config.get('optimizer', 'adamw')}, "
                            f"not {cfg.optimizer}; resume with the optimizer whose state it holds")
        optimizer.load_state_dict(saved.optimizer_state())
        train_loader.load_state_dict(saved.loader_states[min(d.rank, saved.world_size - 1)])
        ckpt.set_rng_state(saved.rng_state(min(d.rank, saved.world_size - 1)))
        start = saved.step
    if use_compile(cfg, device):
        if d.enabled and cfg.compile_mode in CUDAGRAPH_MODES:
            raise UserError(f"--compile-mode {cfg.compile_mode} captures CUDA graphs, which this trainer does not "
                            "combine with DDP: use default or max-autotune-no-cudagraphs with torchrun")
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[d.local_rank] if device.type == "cuda" else None)

    if d.master:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "config.json.tmp"
        tmp.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        os.replace(tmp, run_dir / "config.json")
    log = MetricsLog(run_dir / "metrics.jsonl", d.master, start if saved is not None else None)
    tokens_per_step = cfg.batch_size * cfg.seq_len * accum * d.world_size
    flops = flops_per_token(raw_model.config, cfg.seq_len, raw_model.num_params())
    from gptscratch.mfu import peak_flops

    peak = peak_flops(device)  # None on a CPU, MPS or an unknown GPU
    if d.master:
        print(f"gptscratch train: {raw_model.num_params() / 1e6:.2f}M parameters on {device}"
              f"{' x' + str(d.world_size) if d.enabled else ''}, {amp or torch.float32} compute, "
              f"{tokens_per_step:,} tokens/step ({accum} micro-step(s) of {cfg.batch_size}x{cfg.seq_len}), "
              f"{cfg.max_steps} steps, run dir {run_dir}", file=sys.stderr)
        if device.type == "cuda" and peak is None:
            print(f"gptscratch train: unknown GPU {torch.cuda.get_device_name(device)!r}: no MFU reported",
                  file=sys.stderr)

    def save(step: int) -> Path | None:
        states = gather(train_loader.state_dict(), d)
        rngs = gather(ckpt.rng_state(), d)
        path = None
        if d.master:
            path = ckpt.save_checkpoint(ckpt_dir, step, raw_model, optimizer, asdict(cfg), states, rngs, cfg.keep)
        if d.enabled:
            dist.barrier()
        return path

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_steps, initial=start, disable=not d.master, desc="train", unit="step",
               dynamic_ncols=True, file=sys.stderr)
    last_val = None
    result: dict = {"run_dir": str(run_dir)}
    step = start
    with StopRequested() as stop:
        while step < cfg.max_steps:
            last_step = step == cfg.max_steps - 1
            if cfg.eval_interval > 0 and (step % cfg.eval_interval == 0 or last_step):
                last_val = estimate_val_loss(raw_model, val_loader, cfg.eval_batches, device, amp, d)
                log.write(step=step, val_loss=last_val)
            if hellaswag is not None and step > 0 and (step % cfg.hellaswag_interval == 0 or last_step):
                from gptscratch.evaluate.hellaswag import hellaswag_eval

                hs = hellaswag_eval(raw_model, hellaswag, device, rank=d.rank, world_size=d.world_size, amp=amp)
                log.write(step=step, hellaswag_acc=hs["acc"], hellaswag_acc_norm=hs["acc_norm"], hellaswag_n=hs["n"])
            if d.master and cfg.sample_interval > 0 and step > 0 and step % cfg.sample_interval == 0:
                for text in samples(raw_model, cfg, device, amp):
                    tqdm.write(f"--- sample at step {step} ---\n{text}", file=sys.stderr)

            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=device)
            try:
                for micro in range(accum):
                    x, y = train_loader.next_batch()
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    # gradients are all-reduced once, on the last micro-step
                    sync = model.no_sync() if d.enabled and micro < accum - 1 else contextlib.nullcontext()
                    with sync, attention_backend(cfg.attention, device):
                        with autocast(device, amp):
                            _, loss = model(x, y, return_logits=not chunked, amp=amp)
                        loss = loss / accum
                        loss_sum += loss.detach()
                        loss.backward()
            except torch.cuda.OutOfMemoryError:
                if step == start:
                    raise UserError(
                        f"out of memory on the first step with --batch-size {cfg.batch_size} --seq-len {cfg.seq_len}: "
                        "lower --batch-size (accumulation grows to keep --total-batch-tokens) or use a smaller model"
                    ) from None
                raise
            loss_value = float(all_reduce_mean(loss_sum, d))
            if not math.isfinite(loss_value):
                latest = ckpt.list_checkpoints(ckpt_dir)
                where = f"the last good checkpoint is {latest[-1]}" if latest else "no checkpoint was saved yet"
                raise UserError(f"loss is {loss_value} at step {step}; stopping ({where}); try a lower --lr")
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
            norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), clip)
            lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.decay_frac)
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * lr / cfg.lr
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            tok_s = tokens_per_step / dt
            record = dict(step=step, loss=loss_value, lr=lr, grad_norm=float(norm), tokens_per_s=round(tok_s, 1),
                          dt_ms=round(dt * 1000, 2))
            if peak:
                record["mfu"] = round(tok_s * flops / (peak * d.world_size), 4)
            if step % cfg.log_interval == 0 or last_step:
                log.write(**record)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                            **({"val": f"{last_val:.3f}"} if last_val is not None else {}))
            bar.update(1)
            step += 1
            testing.pause(testing.STEP_DELAY)  # tests kill a run between checkpoints here
            stop_now = any(gather(stop.signal is not None, d))  # every rank stops at the same step
            if (cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0) or step == cfg.max_steps or stop_now:
                path = save(step)
                result["checkpoint"] = str(path) if path else None
            if stop_now:
                if d.master:
                    tqdm.write(f"gptscratch train: stopped by signal at step {step}; checkpoint saved, "
                               f"resume with --resume", file=sys.stderr)
                result["stopped"] = True
                break
    bar.close()
    result["val_loss"] = last_val
    result["step"] = step
    if d.master and not result.get("stopped"):
        result["samples"] = samples(raw_model, cfg, device, amp)
        for i, text in enumerate(result["samples"]):
            print(f"--- sample {i + 1} ---\n{text}")
        result["plot"] = _plot(run_dir)
    return result


def _plot(run_dir: Path) -> str | None:
    try:
        from gptscratch.plot import plot_runs

        out = run_dir / "loss.png"
        plot_runs([run_dir], out)
        return str(out)
    except ImportError:
        print("gptscratch train: matplotlib is not installed, no loss plot (pip install 'gptscratch[plot]')",
              file=sys.stderr)
        return None


def cmd_train(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    for key in ("data", "out", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    preset = args.preset
    source = None
    if args.resume:
        run_dir = Path(overrides.get("out") or f"runs/{preset or 'demo'}")
        try:
            source = ckpt.find_checkpoint(run_dir if args.resume == "latest" else args.resume)
        except UserError:
            if args.resume != "latest":
                raise
            # nothing saved yet: start fresh, so a preemptible job can always be launched with --resume
            print(f"gptscratch train: no checkpoint in {run_dir} yet, starting a new run", file=sys.stderr)
    if source is not None:
        # continue the run as it was configured; explicit overrides still win (e.g. a longer --max-steps)
        saved_cfg = ckpt.load_checkpoint(source).config
        cfg = config_from_dict({**saved_cfg, **overrides})
        validate(cfg)
    else:
        cfg = resolve_config(preset or "demo", overrides)
    result = train(cfg, resume=str(source) if source is not None else None)
    if result.get("stopped") or int(os.environ.get("RANK", "0")) != 0:
        return 0
    run_dir = result["run_dir"]
    plot = f", plot {result['plot']}" if result.get("plot") else ""
    val = f", val loss {result['val_loss']:.4f}" if result["val_loss"] is not None else ""
    prompt = cfg.sample_prompt.strip().splitlines()[0] if cfg.sample_prompt.strip() else ""
    prompt = f" --prompt {shlex.quote(prompt)}" if prompt and prompt != "<|endoftext|>" else ""
    print(f"done: {result['step']} steps{val}. Checkpoint {result.get('checkpoint')}, metrics {run_dir}/metrics.jsonl"
          f"{plot}. Sample with: gptscratch sample --ckpt {run_dir}{prompt}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train a GPT (default: the demo preset on Shakespeare)",
        description=(
            "Train a GPT-2. Every setting of the training config can be overridden as --key value "
            f"(dashes or underscores). Presets: {', '.join(PRESETS)}. Under torchrun it runs DDP."
        ),
        epilog="settings (defaults before a preset applies): "
        + ", ".join(f"--{f.name.replace('_', '-')} {f.default!r}" for f in dataclasses.fields(TrainConfig))
        + ".  Example: gptscratch train --preset gpt2-124m --data data/fineweb-edu --max-steps 100",
    )
    p.add_argument("--preset", default=None, help="named config (default demo)")
    p.add_argument("--data", default=None, help=f"token shard directory (default {DEFAULT_DATA})")
    p.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N, mps")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint of the run dir, or from PATH")
    p.set_defaults(func=cmd_train, accepts_overrides=True)
