"""The GPU benchmark (the `bench` part of benchmarks/gpu.sh): matmul peak, copy bandwidth, GPT-2 124M training
with MFU, generation. Each section runs under its own share of a hard time budget (an alarm interrupts a
section that overruns, even mid-compile), one failure leaves the others' numbers, and the summary is
rewritten after every section. `--dry-run` does the same on tiny shapes on the CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import describe_machine, int_list, machine_info, print_json, sync
from benchmarks.vs_transformers import TRAIN_PRESETS, Shape, bench_generate, bench_train, print_generate, print_train
from gptscratch import mfu
from gptscratch.errors import UserError
from gptscratch.io import write_text
from gptscratch.precision import allow_tf32


class SectionTimeout(BaseException):
    """Raised by SIGALRM when a section outlives its share of the time budget (BaseException, so that no
    library's `except Exception` swallows it)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise SectionTimeout(f"section ran past its {seconds:.0f} s budget")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def matmul_peak(device: torch.device, n: int, iters: int) -> dict:
    """Best of three timings of `iters` (n x n) @ (n x n) bf16 matmuls: the FLOP/s this card really reaches."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b, out=c)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "iters": iters, "flops": 2 * n**3 * iters / best, "tflops": 2 * n**3 * iters / best / 1e12}


def copy_bandwidth(device: torch.device, n_bytes: int, iters: int) -> dict:
    """Device-to-device copy, counting the bytes read and written: the memory bandwidth a kernel can use."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return {"bytes": n_bytes, "iters": iters, "gb_per_s": 2 * n_bytes * iters / best / 1e9}


def _gpu_plan(dry_run: bool) -> dict:
    if dry_run:  # tiny shapes, CPU: proves every code path before any GPU time is spent
        return dict(device="cpu", matmul_n=256, matmul_iters=3, copy_bytes=2**24, copy_iters=3,
                    train=Shape(n_layer=2, n_head=2, n_embd=64, seq_len=64, batch_size=4, vocab_size=1000,
                                vocab_multiple=64),
                    batch_sizes=[4, 2], fake_oom_above=2, repeats=2, steps_per_repeat=1, warmup=2,
                    gen=Shape(n_layer=2, n_head=2, n_embd=64, seq_len=0, batch_size=0, vocab_size=0),
                    gen_batches=[1, 2], new_tokens=8, gen_repeats=2, gen_uncached_repeats=1, budget_s=300)
    return dict(device="cuda", matmul_n=8192, matmul_iters=50, copy_bytes=2**30, copy_iters=20,
                train=Shape(**TRAIN_PRESETS["gpt2-124m"]), batch_sizes=[64, 32, 16], fake_oom_above=None,
                repeats=5, steps_per_repeat=5, warmup=3,
                gen=Shape(n_layer=12, n_head=12, n_embd=768, seq_len=0, batch_size=0, vocab_size=0),
                gen_batches=[1, 8], new_tokens=256, gen_repeats=3, gen_uncached_repeats=1, budget_s=330)


def cmd_gpu(args: argparse.Namespace) -> int:
    """Every GPU figure in one run; each section survives the others' failures; a summary after each."""
    start = time.monotonic()
    plan = _gpu_plan(args.dry_run)
    budget = args.budget_s or plan["budget_s"]
    deadline = start + budget
    device = torch.device(args.device or plan["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("bench gpu: no CUDA device here; run with --dry-run to check it on the CPU")
    allow_tf32(device)
    out_dir = Path(args.out) if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    summary: dict = {"dry_run": args.dry_run, "budget_s": budget, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "sections": {}}

    def write_summary() -> None:
        summary["elapsed_s"] = round(time.monotonic() - start, 1)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text(out_dir / "gpu_summary.json", json.dumps(summary, indent=2, default=str) + "\n")

    def section(name: str, fn: Callable[[], dict], cap_s: float, keep_s: float = 0.0,
                partial: dict | None = None) -> dict | None:
        """Run `fn` within min(cap_s, what is left of the budget after keeping keep_s for later sections).
        If it fails, the figures it left in `partial` go into the summary."""
        allowed = min(cap_s, deadline - time.monotonic() - keep_s)
        print(f"\n== {name} (up to {allowed:.0f} s; {deadline - time.monotonic():.0f} s of budget left)", flush=True)
        if allowed < 5:
            summary["sections"][name] = {"status": "skipped: out of time"}
            print("skipped: out of time", flush=True)
            write_summary()
            return None
        t0 = time.monotonic()
        try:
            with _time_limit(allowed):
                result = fn()
            summary["sections"][name] = {"status": "ok", "seconds": round(time.monotonic() - t0, 1), **result}
        except (Exception, SectionTimeout) as e:  # noqa: BLE001 - one section's failure must not end the run
            traceback.print_exc()
            summary["sections"][name] = {"status": f"failed: {type(e).__name__}: {str(e)[:300]}",
                                         "seconds": round(time.monotonic() - t0, 1), "partial": partial}
            print(f"{name}: FAILED ({type(e).__name__}: {str(e)[:200]}); going on", flush=True)
            result = None
        write_summary()
        return result

    def log(msg: str) -> None:
        print(msg, flush=True)

    info = machine_info(device)
    nominal = mfu.peak_flops(device) if device.type == "cuda" else None

    def env() -> dict:
        extra = {"cudnn": torch.backends.cudnn.version()} if device.type == "cuda" else {}
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            extra.update(memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count)
        res = {**info, **extra, "nominal_bf16_tflops": None if nominal is None else nominal / 1e12}
        for k, v in res.items():
            print(f"{k}: {v}", flush=True)
        if device.type == "cuda" and nominal is None:
            print(f"unknown GPU {info.get('gpu')!r}, no MFU against a nominal peak", flush=True)
        return res

    section("environment", env, cap_s=30)

    def matmul() -> dict:
        res = matmul_peak(device, plan["matmul_n"], plan["matmul_iters"])
        print(f"bf16 matmul {res['n']}^3: {res['tflops']:.1f} TFLOPS"
              + (f" ({100 * res['flops'] / nominal:.0f}% of nominal {nominal / 1e12:.0f})" if nominal else ""),
              flush=True)
        return res

    measured = section("matmul_peak", matmul, cap_s=30)
    measured_peak = measured["flops"] if measured else None

    def copy() -> dict:
        res = copy_bandwidth(device, plan["copy_bytes"], plan["copy_iters"])
        print(f"copy {res['bytes'] / 2**20:.0f} MiB: {res['gb_per_s']:.0f} GB/s (read + write)", flush=True)
        return res

    section("copy_bandwidth", copy, cap_s=30)

    train_progress: dict = {}
    batch_sizes = int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes else plan["batch_sizes"]

    def train() -> dict:
        res = bench_train(plan["train"], device, torch.bfloat16, compile=not args.no_compile, repeats=plan["repeats"],
                          steps_per_repeat=plan["steps_per_repeat"], warmup=plan["warmup"], log=log,
                          batch_sizes=batch_sizes, fake_oom_above=plan["fake_oom_above"], progress=train_progress)
        print_train(res, describe_machine(info), nominal)
        for name in ("gptscratch", "transformers"):
            tps = res[name]["tokens_per_s"]
            res[name]["mfu_nominal"] = None if nominal is None else mfu.mfu(tps, res["flops_per_token"], nominal)
            res[name]["mfu_measured"] = None if measured_peak is None else mfu.mfu(tps, res["flops_per_token"],
                                                                                   measured_peak)
            if measured_peak:
                print(f"MFU {name} against the measured matmul peak ({measured_peak / 1e12:.0f} TFLOPS): "
                      f"{100 * res[name]['mfu_measured']:.1f}%", flush=True)
        return res

    section("train_gpt2_124m", train, cap_s=budget, keep_s=45 if not args.dry_run else 20, partial=train_progress)

    def gen() -> dict:
        res = bench_generate(plan["gen"], device, torch.bfloat16, plan["gen_batches"], plan["new_tokens"],
                             prompt_len=8, repeats=plan["gen_repeats"], uncached_repeats=plan["gen_uncached_repeats"],
                             log=log)
        print_generate(res, describe_machine(info))
        return res

    section("generate", gen, cap_s=budget)

    failed = [k for k, v in summary["sections"].items() if v["status"] != "ok"]
    print(f"\n== done in {time.monotonic() - start:.0f} s; sections failed or skipped: {failed or 'none'}", flush=True)
    if out_dir is not None:
        print(f"summary: {out_dir / 'gpu_summary.json'}", flush=True)
    print_json({"bench": "gpu", **summary})
    return 0 if not failed else 1


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "gpu", help="on a GPU: matmul peak, copy bandwidth, 124M training against transformers (MFU), generation",
        description="Measures the card's bf16 matmul peak and copy bandwidth, GPT-2 124M training (bf16 autocast, "
                    "compile, fused AdamW) for gptscratch and transformers with MFU, and generation, within a "
                    "hard time budget. Writes $OUT/gpu_summary.json when OUT is set.")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: check every path, quickly")
    p.add_argument("--device", help="default cuda (cpu with --dry-run)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--batch-sizes", help="training micro-batches to try in order until one fits (default 64,32,16)")
    p.add_argument("--budget-s", type=float, help="hard time budget in seconds (default 330; 300 for --dry-run)")
    p.add_argument("--out", help="directory for gpu_summary.json (default $OUT when set)")
    p.set_defaults(func=cmd_gpu)
