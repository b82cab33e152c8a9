"""A/B of training-step variants on one GPU, in one process: which loss path, compile mode and attention
kernel make GPT-2 124M train fastest. It decides `gptscratch train`'s defaults on CUDA.

A variant is a `+`-joined list of choices, each optional:
  loss       full (logits + F.cross_entropy, fused by inductor) | chunked (our LM head + CE, return_logits=False)
  compile    default | max-autotune-no-cudagraphs | max-autotune | reduce-overhead
  attention  flash | cudnn | efficient | math (the SDPA kernel, as train's --attention; left out, torch picks)
  batch      bN, e.g. b128 (the micro-batch; left out, --batch-size)
  tuning     cdt (inductor's coordinate_descent_tuning, as gpt-fast uses)
e.g. `full`, `chunked+cudnn`, `chunked+b128`, `full+max-autotune-no-cudagraphs`.

A step here is one micro-batch and one AdamW step, as in `python -m benchmarks train`; `gptscratch train` takes
one AdamW step per 8 micro-batches of 64 (gpt2-124m preset), so its tokens/s can only be a little higher.
A variant that runs out of memory is reported as such and the others go on.

Every variant gets the same weights, batch, bf16 autocast and fused AdamW. Each is compiled and warmed up
and timed once alone (printed at once, so a run cut short still says something); then all of them are
timed A B C A B C over `--repeats` repeats and the last line is one JSON object (also written to
$OUT/gpu_ab.json when OUT is set). Variants are compiled in the order given; once `--budget-s` would be
passed, the rest are skipped, so put slow-to-compile ones (max-autotune) last.

    python -m benchmarks gpu-ab                      # on the GPU: about 3-5 minutes
    python -m benchmarks gpu-ab --dry-run            # tiny shapes on the CPU first
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import time
from dataclasses import dataclass

import torch

from benchmarks.harness import PeakMemory, alternate, sync
from gptscratch.device import ATTENTION_BACKENDS, attention_backend
from gptscratch.errors import UserError
from gptscratch.mfu import flops_per_token
from gptscratch.model import GPT, GPTConfig
from gptscratch.precision import allow_tf32, autocast
from gptscratch.train.config import COMPILE_MODES, CUDAGRAPH_MODES
from gptscratch.train.optim import configure_optimizer

DEFAULT_VARIANTS = "full,chunked,full+cudnn,chunked+cudnn,chunked+b128,full+cdt,full+max-autotune-no-cudagraphs"
ATTENTION = tuple(a for a in ATTENTION_BACKENDS if a != "auto")


@dataclass
class Variant:
    name: str
    loss: str = "full"
    mode: str = "default"
    attention: str = ""
    batch_size: int = 0  # 0: --batch-size
    coordinate_descent: bool = False


def parse_variants(text: str) -> list[Variant]:
    out = []
    for name in (v.strip() for v in text.split(",") if v.strip()):
        v = Variant(name)
        for part in name.split("+"):
            if part in ("full", "chunked"):
                v.loss = part
            elif part in COMPILE_MODES:
                v.mode = part
            elif part in ATTENTION:
                v.attention = part
            elif part.startswith("b") and part[1:].isdigit() and int(part[1:]) > 0:
                v.batch_size = int(part[1:])
            elif part == "cdt":
                v.coordinate_descent = True
            else:
                raise UserError(f"--variants: {part!r} in {name!r} is not a loss path (full, chunked), a compile "
                                f"mode ({', '.join(COMPILE_MODES)}), an attention kernel ({', '.join(ATTENTION)}), "
                                "a batch size (b64) or cdt")
        out.append(v)
    if not out:
        raise UserError("--variants: expected at least one variant, e.g. full,chunked")
    return out


def make_step(v: Variant, cfg: GPTConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device, compile: bool):
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    opt = configure_optimizer(model, 6e-4, device_type=device.type)
    fwd = torch.compile(model, mode=None if v.mode == "default" else v.mode) if compile else model
    cudagraphs = compile and v.mode in CUDAGRAPH_MODES and device.type == "cuda"

    def step():
        if cudagraphs:  # the previous step's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        # on a CPU (the dry run) cudnn and efficient do not exist: torch's own pick stands in for them
        with attention_backend(v.attention if device.type == "cuda" else "auto", device):
            with autocast(device, torch.bfloat16):
                _, loss = fwd(x, y, return_logits=v.loss == "full", amp=torch.bfloat16)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def run(args: argparse.Namespace) -> int:
    """Time every variant; a bad --variants is a UserError (one line, exit 2)."""
    variants = parse_variants(args.variants or ("full,chunked" if args.dry_run else DEFAULT_VARIANTS))
    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if args.dry_run:
        cfg, B, T = GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, vocab_multiple=64), 2, 64
    else:
        cfg, B, T = GPTConfig(vocab_multiple=64), args.batch_size, 1024
    allow_tf32(device)
    g = torch.Generator().manual_seed(0)
    max_b = max([B] + [v.batch_size for v in variants])
    data = torch.randint(0, cfg.vocab_size, (max_b, T + 1), generator=g).to(device)
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "batch_size": B, "seq_len": T, "steps_per_repeat": args.steps,
                    "variants": {}, "skipped": []}
    with torch.device("meta"):  # counts the parameters without allocating or initialising them
        n_params = GPT(cfg).num_params()
    result["flops_per_token"] = flops_per_token(cfg, T, n_params)
    runs = {}
    for v in variants:
        if runs and time.perf_counter() - t_start > args.budget_s:
            result["skipped"].append(v.name)
            print(f"{v.name}: skipped, past --budget-s {args.budget_s:.0f}", flush=True)
            continue
        b = v.batch_size or B
        x, y = data[:b, :-1].contiguous(), data[:b, 1:].contiguous()
        tokens = b * T * args.steps
        step = make_step(v, cfg, x, y, device, compile=not args.no_compile)
        tuning = contextlib.nullcontext()
        if v.coordinate_descent:
            import torch._inductor.config as inductor_config

            tuning = inductor_config.patch(coordinate_descent_tuning=True)
        t0 = time.perf_counter()
        try:
            if args.fake_oom_above is not None and b > args.fake_oom_above:
                raise torch.OutOfMemoryError(f"simulated out of memory at batch {b} (--fake-oom-above)")
            with tuning, PeakMemory(device) as mem:
                for _ in range(3):  # compiles on the first call
                    loss = step()
                sync(device)
        except torch.OutOfMemoryError:
            del step
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result["variants"][v.name] = {"batch_size": b, "status": "out of memory"}
            print(f"{v.name}: out of memory at batch {b}", flush=True)
            continue
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        alone = tokens / (time.perf_counter() - t0)
        result["variants"][v.name] = {"batch_size": b, "warmup_s": round(warm, 1), "alone_tokens_per_s": round(alone),
                                      "peak_mib": round((mem.peak_bytes or 0) / 2**20), "loss": float(loss)}
        print(f"{v.name}: batch {b}, compile + 3 steps {warm:.1f} s, alone {alone:,.0f} tokens/s, "
              f"loss {float(loss):.4f}", flush=True)
        runs[v.name] = (step, tokens, args.repeats)
    rates = alternate(runs, device, lambda msg: print(msg, flush=True))
    for name, r in rates.items():
        med = statistics.median(r)
        result["variants"][name].update(tokens_per_s=round(med), all=[round(t) for t in r])
        print(f"{name:<45} {med:12,.0f} tokens/s (median of {len(r)})", flush=True)
    result["best"] = max(rates, key=lambda n: statistics.median(rates[n])) if rates else None
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    line = json.dumps(result, sort_keys=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_ab.json"), "w") as f:
            f.write(line + "\n")
    print(line, flush=True)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("gpu-ab", help="on a GPU: training-step variants (loss path, compile mode, attention) "
                       "against each other", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=None, help=f"comma-separated (default {DEFAULT_VARIANTS})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    p.add_argument("--budget-s", type=float, default=420, help="compile no further variant after this")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--fake-oom-above", type=int, default=None, help=argparse.SUPPRESS)  # tests the OOM path
    p.set_defaults(func=run)
