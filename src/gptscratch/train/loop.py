"""The training loop: one CPU, one GPU, or many GPUs under torchrun, with exact resume.

`train(cfg, saved)` is `setup`, which builds every piece of the run's state into a `Run`, then `loop`,
which steps it. Resuming loads each piece's state_dict(), including every rank's loader position and
RNG state, so a run that is killed and resumed computes the same losses, step for step, as one that
never stopped. `resolve_run` decides, once, which config a run has and which checkpoint it continues.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from gptscratch import testing
from gptscratch.data.loader import TokenLoader
from gptscratch.data.prepare import ensure_shakespeare
from gptscratch.device import attention_backend
from gptscratch.errors import UserError
from gptscratch.evaluate import core
from gptscratch.evaluate.hellaswag import Example, default_file, hellaswag_eval, load_examples
from gptscratch.generate import generate
from gptscratch.hf.pretrained import load_source
from gptscratch.io import append_text
from gptscratch.mfu import flops_per_token, mfu, peak_flops
from gptscratch.model import GPT
from gptscratch.paths import DEFAULT_DATA
from gptscratch.plot import plot_runs
from gptscratch.precision import allow_tf32, autocast, autocast_dtype
from gptscratch.tokenizer import Tokenizer, check_same
from gptscratch.train import checkpoint as ckpt
from gptscratch.train import fsdp, rundir
from gptscratch.train.config import (
    CUDAGRAPH_MODES,
    TrainConfig,
    grad_accum_steps,
)
from gptscratch.train.distributed import (
    Dist,
    all_reduce_mean,
    barrier,
    gather,
    init_distributed,
    lost_rank,
    on_master,
    shutdown,
)
from gptscratch.train.optim import build_optimizer, load_optimizer_state, lr_at


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended as it happens (rundir.make_ready starts or trims it)."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, **record) -> None:
        if self.enabled:
            append_text(self.path, json.dumps(record) + "\n")


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


# --- setup ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a training run holds, built by `setup` and stepped by `loop`."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    amp: torch.dtype | None  # the autocast dtype of every forward pass (precision.py); None: float32
    chunked: bool  # the chunked LM head + cross-entropy (return_logits=False)
    accum: int  # micro-steps per optimizer step
    run_dir: Path
    model: torch.nn.Module  # what the training step calls: compiled and/or DDP-wrapped
    raw_model: GPT  # the plain module (sharded in place under FSDP): evaluation and sampling use it, uncompiled
    optimizer: torch.optim.Optimizer  # or optim.MuonAdamW, which steps and saves like one
    train_loader: TokenLoader
    val_loader: TokenLoader
    hellaswag: list[Example] | None
    core: list[core.TaskData] | None  # CORE's tasks, read once (--core-interval)
    log: MetricsLog
    start: int  # the first step this process runs (the checkpoint's step when resuming)
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float | None  # the GPU's nominal peak for MFU; None on a CPU, MPS or an unknown GPU

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def tokenizer(self) -> Tokenizer:
        """The data's, which every checkpoint of the run carries."""
        return self.train_loader.tokenizer

    @property
    def sharded(self) -> bool:
        """--parallel fsdp: every rank takes part in every forward pass, evaluation and sampling included."""
        return self.cfg.parallel == "fsdp"


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.compile == "true" or (cfg.compile == "auto" and device.type == "cuda")


def chunked_loss(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.loss_impl == "chunked" or (cfg.loss_impl == "auto" and device.type != "cuda")


def open_data(cfg: TrainConfig, d: Dist) -> tuple[TokenLoader, TokenLoader]:
    data = Path(cfg.data)
    if not (data / "manifest.json").exists() and not any(data.glob("*.bin")):
        if cfg.data == DEFAULT_DATA:
            if d.master:
                ensure_shakespeare(data)
            barrier(d)
        elif not data.exists():
            raise UserError(f"--data {data}: no such directory; make one with `gptscratch prepare SOURCE --out {data}`")
        else:
            raise UserError(
                f"--data {data}: holds no token shards; make them with `gptscratch prepare SOURCE --out {data}`"
            )
    train = TokenLoader(data, "train", batch_size=cfg.batch_size, seq_len=cfg.seq_len, rank=d.rank,
                        world_size=d.world_size, seed=cfg.seed, shuffle=cfg.shuffle)
    # The val estimate reads eval_batches batches of rows drawn from across the whole split, the same rows
    # every time (seed 0, whatever the run's seed) so that evaluations and runs compare. Reading the split's
    # first batches instead is biased wherever its first documents differ from the rest (numpy's source:
    # 2.67 there against 3.57 over every window).
    val = TokenLoader(data, "val", batch_size=cfg.batch_size, seq_len=cfg.seq_len, rank=d.rank,
                      world_size=d.world_size, seed=0, shuffle="rows")
    if train.chat and not cfg.chat:
        raise UserError(f"--data {data}: holds conversations (prepared with --chat); train a chat model on them with "
                        "--preset sft (or --chat)")
    if cfg.chat and not train.chat:
        raise UserError(f"--chat: --data {data} holds no conversations; make them with `gptscratch prepare CORPUS "
                        f"--chat --out DIR`")
    return train, val


def load_hellaswag(cfg: TrainConfig) -> list[Example] | None:
    if cfg.hellaswag_interval <= 0:
        return None
    try:
        path = Path(cfg.hellaswag_file) if cfg.hellaswag_file else default_file("val")
    except UserError as e:
        raise UserError(f"{e} (or train with --hellaswag-interval 0)") from None
    return load_examples(path, limit=cfg.hellaswag_limit or None)


def load_core_tasks(cfg: TrainConfig, d: Dist) -> list[core.TaskData] | None:
    if cfg.core_interval <= 0:
        return None
    bundle = cfg.core_bundle or None
    on_master(d, lambda: core.bundle_path(bundle))  # one process downloads the bundle, if it must
    try:
        return core.load_core(core.bundle_path(bundle), max_per_task=cfg.core_max_per_task)
    except UserError as e:
        raise UserError(f"{e} (or train with --core-interval 0)") from None


def build_model(cfg: TrainConfig, saved: ckpt.Checkpoint | None, tokenizer: Tokenizer) -> GPT:
    """The run's model, its vocabulary the data's `tokenizer`'s: from --init-from or random weights, then the
    checkpoint's weights when resuming."""
    if cfg.init_from and saved is None:  # a resumed run reads its own weights, not the source's again
        model = load_source(cfg, tokenizer)
    else:
        model = GPT(cfg.model_config(tokenizer.vocab_size))
    if saved is not None:  # an FSDP checkpoint's weights load once the model is sharded (setup)
        if asdict(saved.model_config) != asdict(model.config):
            diff = {k: (v, getattr(model.config, k)) for k, v in asdict(saved.model_config).items()
                    if getattr(model.config, k) != v}
            desc = ", ".join(f"{k}: checkpoint {a}, run {b}" for k, (a, b) in diff.items())
            raise UserError(f"{saved.path}: the checkpoint's model differs from this run's ({desc})")
        if not saved.sharded:
            ckpt.load_weights(model, saved.path / "model.safetensors")
    return model


def wrap_for_training(model: GPT, cfg: TrainConfig, d: Dist, device: torch.device) -> torch.nn.Module:
    """torch.compile (when on) and DDP (under torchrun) around the plain module."""
    if use_compile(cfg, device):
        if d.enabled and cfg.compile_mode in CUDAGRAPH_MODES:
            raise UserError(f"--compile-mode {cfg.compile_mode} captures CUDA graphs, which this trainer does not "
                            "combine with DDP: use default or max-autotune-no-cudagraphs with torchrun")
        model = torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    if d.enabled and cfg.parallel == "ddp":
        model = DDP(model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    return model


def setup(cfg: TrainConfig, saved: ckpt.Checkpoint | None, d: Dist, device: torch.device) -> Run:
    """Build the run's state; every check that can fail does so here, before the first step."""
    if saved is not None and saved.world_size != d.world_size and d.master:
        print(f"gptscratch train: {saved.path} was saved by {saved.world_size} process(es), resumed with "
              f"{d.world_size}: the data position carries over, but the run is not bit-identical to an "
              "uninterrupted one", file=sys.stderr)
    accum = grad_accum_steps(cfg, d.world_size)  # fails before any work when the batch cannot divide
    torch.manual_seed(cfg.seed + d.rank)  # before the model's init draws from it
    allow_tf32(device)
    attention_backend(cfg.attention, device)  # fails here, before any work, on a kernel this device lacks
    hellaswag = load_hellaswag(cfg)
    if hellaswag is not None and cfg.parallel == "fsdp":
        hellaswag = fsdp.even_split(hellaswag, d.world_size)  # as many forward passes on every rank
    core_tasks = load_core_tasks(cfg, d)
    train_loader, val_loader = open_data(cfg, d)
    tokenizer = train_loader.tokenizer
    if saved is not None:  # a source's tokenizer is checked against the data's as it loads (load_source)
        check_same(saved.tokenizer, str(saved.path), tokenizer, f"--data {cfg.data}")
    raw_model = build_model(cfg, saved, tokenizer).to(device)
    if cfg.parallel == "fsdp":
        fsdp.shard(raw_model, d, device, autocast_dtype(cfg.dtype, device))  # before the optimizer sees its params
    optimizer = build_optimizer(raw_model, cfg, device.type)
    start = 0
    if saved is not None:
        rank = min(d.rank, saved.world_size - 1)
        if saved.config.get("optimizer", "adamw") != cfg.optimizer:
            raise UserError(f"{saved.path}: trained with --optimizer {saved.config.get('optimizer', 'adamw')}, "
                            f"not {cfg.optimizer}; resume with the optimizer whose state it holds")
        if cfg.parallel == "fsdp":
            fsdp.load_checkpoint(saved, raw_model, optimizer)
        else:
            load_optimizer_state(optimizer, saved.optimizer_state())
        train_loader.load_state_dict(saved.loader_states[rank])
        ckpt.set_rng_state(saved.rng_state(rank))  # after the model's init: the run continues its own stream
        start = saved.step
    model = wrap_for_training(raw_model, cfg, d, device)

    run_dir = Path(cfg.run_dir())  # claimed by `train` (rundir.claim) before any of the above
    on_master(d, lambda: rundir.make_ready(run_dir, saved.path if saved else None, cfg.overwrite, asdict(cfg)))
    n_params = raw_model.num_params()
    run = Run(
        cfg=cfg, d=d, device=device, amp=autocast_dtype(cfg.dtype, device), chunked=chunked_loss(cfg, device),
        accum=accum, run_dir=run_dir, model=model, raw_model=raw_model, optimizer=optimizer,
        train_loader=train_loader, val_loader=val_loader, hellaswag=hellaswag, core=core_tasks,
        log=MetricsLog(run_dir / "metrics.jsonl", d.master), start=start,
        tokens_per_step=cfg.batch_size * cfg.seq_len * accum * d.world_size,
        flops_per_token=flops_per_token(raw_model.config, cfg.seq_len, n_params), peak_flops=peak_flops(device),
    )
    if d.master:
        print(f"gptscratch train: {n_params / 1e6:.2f}M parameters on {device}"
              f"{' x' + str(d.world_size) if d.enabled else ''}{' (fsdp)' if run.sharded else ''}, "
              f"{run.amp or torch.float32} compute, "
              f"{run.tokens_per_step:,} tokens/step ({accum} micro-step(s) of {cfg.batch_size}x{cfg.seq_len}), "
              f"{cfg.max_steps} steps, run dir {run_dir}", file=sys.stderr)
        if device.type == "cuda" and run.peak_flops is None:
            print(f"gptscratch train: unknown GPU {torch.cuda.get_device_name(device)!r}: no MFU reported",
                  file=sys.stderr)
    return run


# --- the loop ------------------------------------------------------------------------------------


@torch.no_grad()
def estimate_val_loss(run: Run) -> tuple[float, float]:
    """(val loss, val bits per byte) over `eval_batches` batches of val rows, every rank's together: over the
    targets the loader keeps (on chat data, the assistant's). Bits per byte weighs each token's loss by the
    UTF-8 bytes it stands for (`evaluate.loss` says how)."""
    model = run.raw_model
    model.eval()
    run.val_loader.reset()  # the same val batches every time, so evaluations compare
    sizes = torch.from_numpy(run.tokenizer.token_bytes(model.config.vocab_size)).to(run.device)
    # nats over every target, nats over text targets, their bytes, the targets
    sums = torch.zeros(4, device=run.device)
    for _ in range(run.cfg.eval_batches):
        x, y = run.val_loader.next_batch()
        x, y = x.to(run.device), y.to(run.device)
        with autocast(run.device, run.amp):
            _, losses = model(x, y, return_logits=False, amp=run.amp, loss_reduction="none")
        kept = y >= 0  # -1: a chat target the assistant did not write
        nbytes = torch.where(kept, sizes[y.clamp(min=0)], 0)
        sums += torch.stack([losses.sum(), losses[nbytes > 0].sum(), nbytes.sum(), kept.sum()]).float()
    model.train()
    nats, text_nats, text_bytes, tokens = all_reduce_mean(sums, run.d).tolist()
    return nats / max(tokens, 1), text_nats / math.log(2) / max(text_bytes, 1)


def samples(run: Run) -> list[str]:
    cfg = run.cfg
    if cfg.num_samples == 0:
        return []
    enc = run.tokenizer.enc
    prompt = enc.encode(cfg.sample_prompt, allowed_special={"<|endoftext|>"}) or [run.tokenizer.eot]
    idx = torch.tensor([prompt] * cfg.num_samples, dtype=torch.long, device=run.device)
    g = torch.Generator(device=run.device).manual_seed(cfg.seed)
    out = generate(run.raw_model, idx, cfg.sample_tokens, temperature=1.0, top_k=50, generator=g, amp=run.amp)
    return [enc.decode([t for t in row if t < enc.n_vocab]) for row in out.tolist()]


def evaluate(run: Run, step: int, last_step: bool) -> float | None:
    """The evaluations due before `step`: val loss (returned, None if not due), HellaSwag, CORE, samples."""
    cfg, val = run.cfg, None
    if cfg.eval_interval > 0 and (step % cfg.eval_interval == 0 or last_step):
        val, bpb = estimate_val_loss(run)
        run.log.write(step=step, val_loss=val, val_bpb=bpb)
    if run.hellaswag is not None and step > 0 and (step % cfg.hellaswag_interval == 0 or last_step):
        hs = hellaswag_eval(run.raw_model, run.hellaswag, run.device, rank=run.d.rank, world_size=run.d.world_size,
                            amp=run.amp, tokenizer=run.tokenizer)
        run.log.write(step=step, hellaswag_acc=hs["acc"], hellaswag_acc_norm=hs["acc_norm"], hellaswag_n=hs["n"])
    if run.core is not None and step > 0 and (step % cfg.core_interval == 0 or last_step):
        result = core.evaluate_core(run.raw_model, run.core, run.device, rank=run.d.rank, world_size=run.d.world_size,
                                    amp=run.amp, tokenizer=run.tokenizer)
        run.log.write(step=step, core=result["core_metric"])
    if (run.d.master or run.sharded) and cfg.sample_interval > 0 and step > 0 and step % cfg.sample_interval == 0:
        texts = samples(run)  # under FSDP every rank takes part in each forward pass; rank 0 prints
        for text in texts if run.d.master else []:
            tqdm.write(f"--- sample at step {step} ---\n{text}", file=sys.stderr)
    return val


def forward_backward(run: Run, step: int) -> float:
    """The gradients of step `step` over `accum` micro-batches; its loss, the mean over ranks, checked finite."""
    cfg, d, device = run.cfg, run.d, run.device
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=device)
    try:
        for micro in range(run.accum):
            x, y = run.train_loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # DDP all-reduces gradients once, on the last micro-step; FSDP reduce-scatters on every one, so
            # that they stay sharded (fsdp.py)
            ddp = d.enabled and not run.sharded
            sync = run.model.no_sync() if ddp and micro < run.accum - 1 else contextlib.nullcontext()
            with sync, attention_backend(cfg.attention, device):
                with autocast(device, run.amp):
                    _, loss = run.model(x, y, return_logits=not run.chunked, amp=run.amp)
                loss = loss / run.accum
                loss_sum += loss.detach()
                loss.backward()
    except torch.cuda.OutOfMemoryError:
        if step == run.start:
            raise UserError(
                f"out of memory on the first step with --batch-size {cfg.batch_size} --seq-len {cfg.seq_len}: "
                "lower --batch-size (accumulation grows to keep --total-batch-tokens) or use a smaller model"
            ) from None
        raise
    loss = float(all_reduce_mean(loss_sum, d))
    if not math.isfinite(loss):
        raise diverged(run, step, f"loss is {loss} at step {step}")
    return loss


def update(run: Run, step: int) -> tuple[float, float]:
    """Clip and apply the gradients of step `step`: (gradient norm, learning rate)."""
    cfg = run.cfg
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")  # inf: measure the norm, clip nothing
    norm = fsdp.clip_grad_norm(run.raw_model, clip)  # the total norm over every rank's shards under FSDP
    lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps, cfg.schedule, cfg.decay_frac)
    for group in run.optimizer.param_groups:
        group["lr"] = group["peak_lr"] * lr / cfg.lr  # each group's own peak (Muon's), on the one schedule
    run.optimizer.step()
    return float(norm), lr


def diverged(run: Run, step: int, what: str) -> UserError:
    """The NaN guard's error, naming the newest checkpoint before `step`: its weights gave a finite loss
    (checkpoint N is written only once step N's loss, of the same weights, is known finite)."""
    good = [c for c in ckpt.list_checkpoints(run.ckpt_dir) if ckpt.step_of(c) < step]
    where = f"the last good checkpoint is {good[-1]}" if good else "no good checkpoint was saved"
    return UserError(f"{what}; stopping ({where}); try a lower --lr")


def snapshot(run: Run) -> tuple[list[dict], list[dict]]:
    """Every rank's loader position and RNG states, gathered: what a checkpoint at this moment holds."""
    return gather(run.train_loader.state_dict(), run.d), gather(ckpt.rng_state(), run.d)


def save_checkpoint(run: Run, step: int, states: tuple[list[dict], list[dict]]) -> str | None:
    """Rank 0 writes the checkpoint of `step` (its path, None on other ranks); a failure stops every rank."""
    loaders, rngs = states
    if run.sharded:  # every rank writes its shards
        path = fsdp.save_checkpoint(run.ckpt_dir, step, run.raw_model, run.optimizer, asdict(run.cfg), loaders, rngs,
                                    run.cfg.keep, run.d, run.tokenizer)
        return str(path) if path else None
    path = on_master(run.d, lambda: ckpt.save_checkpoint(run.ckpt_dir, step, run.raw_model, run.optimizer,
                                                           asdict(run.cfg), loaders, rngs, run.cfg.keep, run.tokenizer))
    return str(path) if path else None


def weights_finite(run: Run) -> bool:
    if run.sharded:
        return fsdp.weights_finite(run.raw_model, run.d)
    return bool(torch.stack([p.isfinite().all() for p in run.raw_model.parameters()]).all())


def loop(run: Run) -> dict:
    """Step the run to cfg.max_steps (or a stop signal); its result: run_dir, step, val_loss, checkpoint, ...

    A checkpoint due at step N holds the state before step N; it is written once step N's loss, from the
    same weights, is known finite (the states are taken before the step draws its batch). So the NaN guard
    never leaves a checkpoint whose weights give NaN, and a resumed run repeats the same steps.
    """
    cfg, d = run.cfg, run.d
    last_val = None
    result: dict[str, Any] = {"run_dir": str(run.run_dir)}
    step = run.start
    # the bar closes (ending its line) on any error, so the error prints on a line of its own
    with StopRequested() as stop, tqdm(total=cfg.max_steps, initial=run.start, disable=not d.master, desc="train",
                                       unit="step", dynamic_ncols=True, file=sys.stderr) as bar:
        while step < cfg.max_steps:
            last_step = step == cfg.max_steps - 1
            due = step > run.start and cfg.ckpt_interval > 0 and step % cfg.ckpt_interval == 0
            states = snapshot(run) if due else None
            val = evaluate(run, step, last_step)
            last_val = val if val is not None else last_val
            t0 = time.perf_counter()
            loss = forward_backward(run, step)
            saving = 0.0
            if states is not None:
                t_save = time.perf_counter()
                result["checkpoint"] = save_checkpoint(run, step, states)
                saving = time.perf_counter() - t_save
            norm, lr = update(run, step)
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0 - saving
            tok_s = run.tokens_per_step / dt
            record = dict(step=step, loss=loss, lr=lr, grad_norm=norm, tokens_per_s=round(tok_s, 1),
                          dt_ms=round(dt * 1000, 2))
            if run.peak_flops:
                record["mfu"] = round(mfu(tok_s, run.flops_per_token, run.peak_flops * d.world_size), 4)
            if step % cfg.log_interval == 0 or last_step:
                run.log.write(**record)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                            **({"val": f"{last_val:.3f}"} if last_val is not None else {}))
            bar.update(1)
            step += 1
            testing.halt("step", step)  # tests kill a run between checkpoints here
            stop_now = any(gather(stop.signal is not None, d))  # every rank stops at the same step
            if step == cfg.max_steps or stop_now:
                # no step follows to check these weights' loss: check the weights themselves
                if not weights_finite(run):
                    raise diverged(run, step, f"the weights are not finite after step {step - 1}")
                result["checkpoint"] = save_checkpoint(run, step, snapshot(run))
            if stop_now:
                if d.master:
                    tqdm.write(f"gptscratch train: stopped by signal at step {step}; checkpoint saved, "
                               f"resume with --resume", file=sys.stderr)
                result["stopped"] = True
                break
    result["val_loss"] = last_val
    result["step"] = step
    texts = samples(run) if not result.get("stopped") and (d.master or run.sharded) else []
    if d.master and not result.get("stopped"):
        result["samples"] = texts
        for i, text in enumerate(result["samples"]):
            print(f"--- sample {i + 1} ---\n{text}")
        result["plot"] = _plot(run.run_dir)
    return result


def _plot(run_dir: Path) -> str | None:
    try:
        out = run_dir / "loss.png"
        plot_runs([run_dir], out)
        return str(out)
    except ImportError:
        print("gptscratch train: matplotlib is not installed, no loss plot (pip install 'gptscratch[plot]')",
              file=sys.stderr)
        return None


def train(cfg: TrainConfig, saved: ckpt.Checkpoint | None = None, resuming: bool = False) -> dict:
    """Train per `cfg`, continuing `saved` (a checkpoint from `resolve_run`) when given; `resuming`: --resume
    was asked, so a directory whose run wrote no checkpoint yet may be started again (rundir.claim)."""
    d, device = init_distributed(cfg.device, group_of_one=cfg.parallel == "fsdp")
    lock = None
    try:
        run_dir = Path(cfg.run_dir())
        lock = on_master(d, lambda: rundir.claim(run_dir, saved.path if saved else None, resuming, cfg.overwrite))
        return loop(setup(cfg, saved, d, device))
    except RuntimeError as e:
        if d.enabled:  # torchrun's SIGTERM to the survivors, a moment after a rank died, would cut the line short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        lost = lost_rank(e, d)
        if lost is None:
            raise
        raise lost from None
    finally:
        if lock is not None:
            lock.release()
        shutdown(d)
