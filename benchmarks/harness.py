"""What every benchmark shares: the machine's description, timing by alternation, peak memory, output.

Each benchmark runs gptscratch and its reference on the same work, alternating A B A B over several
measured repeats after a warm-up, and prints medians and their ratio; with --json the last line is one
JSON object holding every repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gptscratch.device import cpu_has_bf16
from gptscratch.errors import UserError


def machine_info(device: torch.device) -> dict:
    """What RESULTS.md needs next to every figure: the processor, its cores, the library versions."""
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": _cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(info: dict) -> str:
    where = info.get("gpu") or f"{info['cpu']}, {info['cpu_cores']} cores (torch threads {info['torch_threads']})"
    extra = f", CUDA {info['cuda']}" if info.get("cuda") else ""
    return f"machine: {where}; torch {info['torch']}{extra}, transformers {info['transformers']}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory over a block, above the level at its start.

    CUDA: the caching allocator's peak. CPU: the process's resident set, sampled every 2 ms by a thread
    (an approximation: glibc returns large blocks to the OS, small ones it keeps). Only the warm-up runs
    under this, so the sampling thread never competes with a measured repeat.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _rss_bytes()
            self._max = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            if self._base is not None:
                self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            rss = _rss_bytes()
            if rss is not None and rss > self._max:
                self._max = rss

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            rss = _rss_bytes() or 0
            self.peak_bytes = max(self._max, rss) - self._base



def alternate(runs: dict[str, tuple[Callable[[], object], int, int]], device: torch.device,
              log: Callable[[str], None], rates: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Time each run in turn, A B C A B C ..., as (fn, tokens per call, repeats); return tokens/s per repeat.

    Alternating spreads slow drift of the machine (other processes, thermals) over every implementation
    instead of charging it to whichever ran last. `rates`, when given, is filled as the repeats finish.
    """
    rates = {} if rates is None else rates
    rates.update({name: [] for name in runs})
    for r in range(max(n for _, _, n in runs.values())):
        for name, (fn, tokens, repeats) in runs.items():
            if r >= repeats:
                continue
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t0
            rates[name].append(tokens / dt)
            log(f"  repeat {r + 1}: {name:<22} {tokens / dt:12.1f} tokens/s  ({dt:.2f} s)")
    return rates


def summary(rates: list[float]) -> dict:
    return {"tokens_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": len(rates),
            "all": [round(r, 2) for r in rates]}


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def print_json(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def save_json(path: str | Path, obj: object) -> None:
    """A benchmark's `--json FILE`: `obj` indented, its folder made if need be."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")


def quiet_log(verbose: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    return log



def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers like 1,8") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: expected positive integers like 1,8")
    return values


def check_counts(args: argparse.Namespace) -> None:
    for flag in ("repeats", "steps_per_repeat", "warmup"):
        if getattr(args, flag, 1) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected at least 1")


def warn_bf16(device: torch.device, dtype: torch.dtype) -> None:
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16():
        print("note: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 will be emulated and slow", flush=True)

