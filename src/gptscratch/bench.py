"""Benchmarks against the reference implementations: `gptscratch bench train|generate|prepare|gpu`.

Each benchmark runs gptscratch and its reference on the same work, alternating A B A B over several
measured repeats after a warm-up, and prints medians and their ratio:

- train: one full training step (forward, loss, backward, AdamW step) of our GPT against transformers'
  GPT2LMHeadModel (sdpa attention) holding the same weights, with the same two AdamW parameter groups,
  shapes, dtype (bf16 = autocast for both) and compile setting.
- generate: tokens/s of our `generate` with and without its KV cache against transformers'
  `generate(use_cache=True, do_sample=True, top_k=50)` on the same weights and dtype.
- prepare: tokens/s of `gptscratch.data.prepare.prepare` against raw tiktoken `encode_ordinary_batch` in a
  `multiprocessing.Pool` of the same number of workers.
- gpu: the one prepared run for a lent GPU (see benchmarks/gpu.sh): matmul peak, copy bandwidth, GPT-2
  124M training with MFU, generation; `--dry-run` does the same on tiny shapes on the CPU.

One detail of the training comparison: transformers' loss shifts `labels` internally, so it is given
labels = the inputs x (B, T) and scores the T-1 targets that x itself contains, while ours gets
targets = y (x shifted by one) and scores all T. Both run the forward, the LM head and the backward over
all B x T positions (transformers ignores the last position's logits in its loss), so the work differs by
one row of cross-entropy per sequence, and tokens/s counts B x T input tokens for both.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from gptscratch.device import cpu_has_bf16, pick_device
from gptscratch.errors import UserError
from gptscratch.precision import allow_tf32, autocast

# Training shapes. vocab 50304 = GPT-2's 50257 padded to a multiple of 64 (FACTS.md); gpt2-124m keeps
# the real 50257 in our config and pads it with vocab_multiple, and transformers gets 50304, so both
# multiply by the same (768 x 50304) LM head.
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=256, seq_len=256, batch_size=8, vocab_size=50304, vocab_multiple=1),
    "small": dict(n_layer=6, n_head=6, n_embd=384, seq_len=256, batch_size=8, vocab_size=50304, vocab_multiple=1),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, seq_len=1024, batch_size=1, vocab_size=50257,
                      vocab_multiple=64),
}
# Generation samples real token ids, so both models get GPT-2's own 50257-token vocabulary, unpadded.
GENERATE_VOCAB = 50257
GENERATE_BLOCK = 1024
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Shape:
    n_layer: int
    n_head: int
    n_embd: int
    seq_len: int
    batch_size: int
    vocab_size: int
    vocab_multiple: int = 1

    def describe(self) -> str:
        vocab = self.vocab_size if self.vocab_multiple <= 1 else f"{self.vocab_size} padded to x{self.vocab_multiple}"
        return (f"n_layer={self.n_layer} n_head={self.n_head} n_embd={self.n_embd} seq_len={self.seq_len} "
                f"batch_size={self.batch_size} vocab={vocab}")


# ---------------------------------------------------------------------------------------------------------
# Shared pieces: the machine, timing, memory, the transformers twin


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


def hf_twin(model, attn_implementation: str = "sdpa"):
    """transformers' GPT2LMHeadModel holding exactly `model`'s weights (padded vocab rows included)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise UserError("the benchmarks compare against transformers: pip install 'gptscratch[hf]'") from None
    from gptscratch.hf import config_to_hf, to_hf_state_dict

    cfg = config_to_hf(model.config)
    cfg.pop("torch_dtype", None)
    # the padded rows are real rows of the matmul: transformers gets them too, so the work is identical;
    # no bos/eos so that generate never stops early, and a pad id so that it does not warn
    cfg.update(vocab_size=model.config.padded_vocab_size, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = GPT2LMHeadModel._from_config(GPT2Config(**cfg), attn_implementation=attn_implementation)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model, trim_vocab=False), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"transformers twin: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    if hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr():
        raise RuntimeError("transformers twin: the LM head is not tied to the token embedding")
    hf.loss_type = "ForCausalLM"  # what it falls back to anyway, minus a warning
    hf.generation_config.pad_token_id = 0
    hf.generation_config.eos_token_id = None
    hf.generation_config.bos_token_id = None
    return hf.to(model.lm_head.weight.device)


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


def _summary(rates: list[float]) -> dict:
    return {"tokens_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "repeats": len(rates),
            "all": [round(r, 2) for r in rates]}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def _quiet_log(verbose: bool) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    return log


# ---------------------------------------------------------------------------------------------------------
# train


def resolve_shape(args: argparse.Namespace) -> Shape:
    shape = Shape(**TRAIN_PRESETS[args.preset])
    overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "seq_len", "batch_size", "vocab_size")
                 if getattr(args, k, None) is not None}
    if "vocab_size" in overrides:
        overrides["vocab_multiple"] = 1
    shape = replace(shape, **overrides)
    for k, v in asdict(shape).items():
        if v < 1:
            raise UserError(f"--{k.replace('_', '-')} {v}: expected a positive integer")
    if shape.n_embd % shape.n_head:
        raise UserError(f"--n-embd {shape.n_embd} must be divisible by --n-head {shape.n_head}")
    return shape


def _gpt_config(shape: Shape, block_size: int):
    from gptscratch.model import GPTConfig

    return GPTConfig(block_size=block_size, vocab_size=shape.vocab_size, n_layer=shape.n_layer, n_head=shape.n_head,
                     n_embd=shape.n_embd, dropout=0.0, bias=True, vocab_multiple=shape.vocab_multiple)


def _train_steps(model, opt, x: torch.Tensor, y: torch.Tensor, ours: bool, amp: torch.dtype | None,
                 steps: int) -> float:
    loss = None
    for _ in range(steps):
        with autocast(x.device, amp):
            if ours:
                _, loss = model(x, y, return_logits=False, amp=amp)  # the chunked LM head + cross-entropy
            else:
                loss = model(input_ids=x, labels=x).loss  # shifts labels internally (see the module doc)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss


def bench_train(shape: Shape, device: torch.device, dtype: torch.dtype, compile: bool, repeats: int,
                steps_per_repeat: int, warmup: int, seed: int = 1337, log: Callable[[str], None] = print,
                batch_sizes: list[int] | None = None, fake_oom_above: int | None = None,
                progress: dict | None = None) -> dict:
    """Training-step tokens/s of gptscratch and transformers; with several `batch_sizes`, the first that fits.

    `progress`, when given, is filled as the run goes (batch size, warm-up times, each repeat's tokens/s),
    so that a caller cut short by a time limit still has the figures measured so far.
    """
    progress = {} if progress is None else progress
    for b in batch_sizes or [shape.batch_size]:
        progress.clear()
        progress["batch_size"] = b
        try:
            return _bench_train_at(replace(shape, batch_size=b), device, dtype, compile, repeats, steps_per_repeat,
                                   warmup, seed, log, fake_oom_above, progress)
        except torch.OutOfMemoryError as e:
            log(f"batch size {b}: out of memory ({str(e).splitlines()[0][:120]}); trying a smaller one")
        # the failed attempt's models are garbage once its frame is gone: free them before the next try
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if compile:
            torch._dynamo.reset()
    raise torch.OutOfMemoryError(f"no batch size in {batch_sizes} fits")


def _bench_train_at(shape: Shape, device: torch.device, dtype: torch.dtype, compile: bool, repeats: int,
                    steps_per_repeat: int, warmup: int, seed: int, log: Callable[[str], None],
                    fake_oom_above: int | None, progress: dict) -> dict:
    from gptscratch.mfu import flops_per_token
    from gptscratch.model import GPT
    from gptscratch.optim import configure_optimizer

    if fake_oom_above is not None and shape.batch_size > fake_oom_above:
        raise torch.OutOfMemoryError(f"simulated out of memory at batch size {shape.batch_size} (--fake-oom-above)")
    torch.manual_seed(seed)
    ours = GPT(_gpt_config(shape, block_size=shape.seq_len)).to(device)
    theirs = hf_twin(ours, "sdpa")
    ours.train()
    theirs.train()
    models = {"gptscratch": ours, "transformers": theirs}
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, shape.vocab_size, (shape.batch_size, shape.seq_len + 1), generator=g).to(device)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    amp = None if dtype == torch.float32 else dtype

    tokens = shape.batch_size * shape.seq_len * steps_per_repeat
    runs, memory = {}, {}
    first_loss = progress.setdefault("first_loss", {})
    warmup_s = progress.setdefault("warmup_s", {})
    # transformers warms up first: it holds the full logits, so an out-of-memory shows there before our
    # model's compile time is spent; the measured repeats still alternate gptscratch, transformers
    for name in ("transformers", "gptscratch"):
        model = models[name]
        opt = configure_optimizer(model, lr=6e-4, weight_decay=0.1, device_type=device.type)
        fwd = torch.compile(model, dynamic=False) if compile else model
        is_ours = name == "gptscratch"
        # warm-up: compiles (when asked), allocates the optimizer state; its peak memory is the step's
        t0 = time.perf_counter()
        with PeakMemory(device) as mem:
            first_loss[name] = float(_train_steps(fwd, opt, x, y, is_ours, amp, 1).detach())
            if warmup > 1:
                _train_steps(fwd, opt, x, y, is_ours, amp, warmup - 1)
            sync(device)
        warmup_s[name] = time.perf_counter() - t0
        memory[name] = mem.peak_bytes
        log(f"  warm-up {name}: {warmup} step(s) in {warmup_s[name]:.1f} s, first loss {first_loss[name]:.4f}")
        runs[name] = (lambda f=fwd, o=opt, i=is_ours: _train_steps(f, o, x, y, i, amp, steps_per_repeat),
                      tokens, repeats)
    runs = {name: runs[name] for name in models}
    rates = alternate(runs, device, log, progress.setdefault("rates", {}))
    n_params = ours.num_params()
    result = {
        "shape": asdict(shape), "dtype": str(dtype).replace("torch.", ""), "compile": compile,
        "steps_per_repeat": steps_per_repeat, "warmup": warmup, "n_params": n_params,
        "flops_per_token": flops_per_token(ours.config, shape.seq_len, n_params),
    }
    for name in models:
        result[name] = {**_summary(rates[name]), "peak_mem_bytes": memory[name], "first_loss": first_loss[name],
                        "warmup_s": round(warmup_s[name], 2)}
    result["ratio"] = result["gptscratch"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    # each repeat of ours against the one of theirs right after it: drift the two shared cancels here, so
    # the spread of these says how far the ratio of medians can be trusted on this machine
    result["pair_ratios"] = [round(a / b, 4) for a, b in zip(rates["gptscratch"], rates["transformers"], strict=True)]
    return result


def print_train(result: dict, machine: str, peak: float | None = None) -> None:
    from gptscratch import mfu

    s = Shape(**result["shape"])

    def steps_ms(tokens_per_s: float) -> float:
        return 1000 * s.batch_size * s.seq_len / tokens_per_s

    print(f"bench train: {s.describe()}; {result['dtype']}{' autocast' if result['dtype'] != 'float32' else ''}, "
          f"{'compiled' if result['compile'] else 'eager'}")
    print(machine)
    print(f"{'implementation':<14} {'tokens/s':>10} {'min':>10} {'max':>10} {'ms/step':>9} {'peak MiB':>9} "
          f"{'first loss':>10}")
    for name in ("gptscratch", "transformers"):
        r = result[name]
        print(f"{name:<14} {r['tokens_per_s']:>10.1f} {r['min']:>10.1f} {r['max']:>10.1f} "
              f"{steps_ms(r['tokens_per_s']):>9.1f} {_mib(r['peak_mem_bytes']):>9} {r['first_loss']:>10.4f}")
    print(f"ratio gptscratch / transformers: {result['ratio']:.3f}x (medians of {result['gptscratch']['repeats']} "
          f"alternating repeats of {result['steps_per_repeat']} step(s), after {result['warmup']} warm-up step(s))")
    pairs = result.get("pair_ratios")
    if pairs:
        spread = max(pairs) / min(pairs)
        print(f"per-repeat ratios: min {min(pairs):.3f}x, median {statistics.median(pairs):.3f}x, max {max(pairs):.3f}x"
              + (" (a noisy machine: more --repeats narrow the median)" if spread > 1.25 else ""))
    if peak:
        for name in ("gptscratch", "transformers"):
            print(f"MFU {name}: {100 * mfu.mfu(result[name]['tokens_per_s'], result['flops_per_token'], peak):.1f}% "
                  f"of {peak / 1e12:.0f} TFLOPS ({result['flops_per_token'] / 1e9:.3f} GFLOP/token)")
    sys.stdout.flush()


def cmd_train(args: argparse.Namespace) -> int:
    from gptscratch import mfu

    shape = resolve_shape(args)
    _check_counts(args)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    _warn_bf16(device, dtype)
    info = machine_info(device)
    result = bench_train(shape, device, dtype, args.compile, args.repeats, args.steps_per_repeat, args.warmup,
                         seed=args.seed, log=_quiet_log(not args.quiet))
    peak = mfu.peak_flops(device) if device.type == "cuda" else None
    print_train(result, describe_machine(info), peak)
    if device.type == "cuda" and peak is None:
        print(f"unknown GPU {info['gpu']!r}, no MFU")
    if args.json:
        _print_json({"bench": "train", "preset": args.preset, "machine": info, **result})
    return 0


# ---------------------------------------------------------------------------------------------------------
# generate


def bench_generate(shape: Shape, device: torch.device, dtype: torch.dtype, batch_sizes: list[int], new_tokens: int,
                   prompt_len: int, repeats: int, uncached_repeats: int, top_k: int = 50, seed: int = 1337,
                   log: Callable[[str], None] = print) -> dict:
    """Generation tokens/s: ours with and without the KV cache, and transformers' generate, same weights."""
    from gptscratch.generate import generate
    from gptscratch.model import GPT

    if prompt_len + new_tokens > GENERATE_BLOCK:
        raise UserError(f"--prompt-len + --new-tokens = {prompt_len + new_tokens} exceeds the {GENERATE_BLOCK}-token "
                        "context; the benchmark measures generation without a sliding window")
    torch.manual_seed(seed)
    config = _gpt_config(replace(shape, vocab_size=GENERATE_VOCAB, vocab_multiple=1), block_size=GENERATE_BLOCK)
    ours = GPT(config).to(device)
    theirs = hf_twin(ours, "sdpa").to(dtype).eval()
    ours = ours.to(dtype).eval()

    def ours_run(idx: torch.Tensor, n: int, use_cache: bool) -> None:
        gen = torch.Generator(device=device).manual_seed(seed)
        out = generate(ours, idx, n, temperature=1.0, top_k=top_k, generator=gen, use_cache=use_cache)
        assert out.shape[1] == idx.shape[1] + n

    @torch.inference_mode()
    def theirs_run(idx: torch.Tensor, n: int) -> None:
        torch.manual_seed(seed)
        out = theirs.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=True,
                              top_k=top_k, use_cache=True)
        assert out.shape[1] == idx.shape[1] + n, f"transformers generated {out.shape[1] - idx.shape[1]} tokens"

    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in batch_sizes:
        idx = torch.randint(0, GENERATE_VOCAB, (b, prompt_len), generator=g).to(device)
        variants = {
            "gptscratch (KV cache)": (lambda i=idx: ours_run(i, new_tokens, True), repeats),
            "gptscratch (no cache)": (lambda i=idx: ours_run(i, new_tokens, False), uncached_repeats),
            "transformers": (lambda i=idx: theirs_run(i, new_tokens), repeats),
        }
        variants = {k: v for k, v in variants.items() if v[1] > 0}
        log(f"  batch {b}: warm-up")
        ours_run(idx, 4, True)
        ours_run(idx, 4, False)
        theirs_run(idx, 4)
        rates = alternate({k: (fn, b * new_tokens, n) for k, (fn, n) in variants.items()}, device, log)
        for name in variants:
            rows.append({"batch": b, "impl": name, **_summary(rates[name])})
    result = {"shape": {k: v for k, v in asdict(shape).items() if k in ("n_layer", "n_head", "n_embd")},
              "vocab_size": GENERATE_VOCAB, "dtype": str(dtype).replace("torch.", ""), "new_tokens": new_tokens,
              "prompt_len": prompt_len, "top_k": top_k, "rows": rows, "ratios": {}}
    for b in batch_sizes:
        by = {r["impl"]: r["tokens_per_s"] for r in rows if r["batch"] == b}
        cached = by["gptscratch (KV cache)"]
        ratios = {"cache_vs_transformers": cached / by["transformers"]}
        if "gptscratch (no cache)" in by:
            ratios["cache_vs_no_cache"] = cached / by["gptscratch (no cache)"]
        result["ratios"][f"batch{b}"] = ratios
    return result


def print_generate(result: dict, machine: str) -> None:
    s = result["shape"]
    print(f"bench generate: n_layer={s['n_layer']} n_head={s['n_head']} n_embd={s['n_embd']} "
          f"vocab={result['vocab_size']}, {result['dtype']} weights, prompt {result['prompt_len']} tokens, "
          f"{result['new_tokens']} new tokens, top-k {result['top_k']}")
    print(machine)
    print(f"{'batch':>5}  {'implementation':<22} {'tokens/s':>10} {'min':>10} {'max':>10} {'repeats':>7}")
    for r in result["rows"]:
        print(f"{r['batch']:>5}  {r['impl']:<22} {r['tokens_per_s']:>10.1f} {r['min']:>10.1f} {r['max']:>10.1f} "
              f"{r['repeats']:>7}")
    for key, ratios in result["ratios"].items():
        text = ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in ratios.items())
        print(f"{key}: {text}")
    sys.stdout.flush()


def cmd_generate(args: argparse.Namespace) -> int:
    shape = resolve_shape(args)
    _check_counts(args)
    if args.new_tokens < 1 or args.prompt_len < 1 or args.uncached_repeats < 0:
        raise UserError("--new-tokens and --prompt-len must be at least 1, --uncached-repeats at least 0")
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes")
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    _warn_bf16(device, dtype)
    info = machine_info(device)
    result = bench_generate(shape, device, dtype, batch_sizes, args.new_tokens, args.prompt_len, args.repeats,
                            args.uncached_repeats, top_k=args.top_k, seed=args.seed, log=_quiet_log(not args.quiet))
    print_generate(result, describe_machine(info))
    if args.json:
        _print_json({"bench": "generate", "preset": args.preset, "machine": info, **result})
    return 0


# ---------------------------------------------------------------------------------------------------------
# prepare

# A few hundred common words, for a synthetic corpus when no --corpus is given. Real text (FineWeb) is
# better: pass --corpus to measure on it.
_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down "
    "side been now find any new work part take get place made live where after back little only round man year "
    "came show every good me give our under name very through just form sentence great think say help low line "
    "differ turn cause much mean before move right boy old too same tell does set three want air well also play "
    "small end put home read hand port large spell add even land here must big high such follow act why ask men "
    "change went light kind off need house picture try us again animal point mother world near build self earth "
    "father head stand own page should country found answer school grow study still learn plant cover food sun "
    "four between state keep eye never last let thought city tree cross farm hard start might story saw far sea "
    "draw left late run don't while press close night real life few north 1990 2024 3.14 $5 (see above) -- e.g."
).split()


def synthetic_corpus(directory: Path, docs: int, doc_chars: int, seed: int = 0) -> Path:
    """Write `docs` text files of about `doc_chars` characters of pseudo-English each."""
    import random

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(docs):
        parts, n = [], 0
        while n < doc_chars:
            sentence = " ".join(rng.choices(_WORDS, k=rng.randint(5, 25)))
            sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "?", "!", ",\n"])
            if rng.random() < 0.1:
                sentence += "\n\n"
            parts.append(sentence)
            n += len(sentence) + 1
        (directory / f"doc{i:06d}.txt").write_text(" ".join(parts), encoding="utf-8")
    return directory


def read_documents(corpus: str, split_docs_on: str | None = None) -> list[str]:
    """The documents `prepare` reads from the local source `corpus`, through its own source reader, so that
    both sides of the comparison tokenize exactly the same texts (a directory of .txt files: one per file)."""
    from gptscratch.data.sources import open_source

    return list(open_source(corpus, split_docs_on=split_docs_on).documents(0))


_worker_encoding = None


def _init_worker() -> None:
    global _worker_encoding
    from gptscratch.tokenizer import get_encoding

    _worker_encoding = get_encoding()


def _encode_chunk(texts: list[str]):
    """One worker's share of the raw baseline: token ids with an <|endoftext|> before each document, as uint16."""
    import numpy as np

    from gptscratch.tokenizer import EOT_TOKEN

    out = []
    for ids in _worker_encoding.encode_ordinary_batch(texts, num_threads=1):
        out.append(np.array([EOT_TOKEN], dtype=np.uint16))
        out.append(np.asarray(ids, dtype=np.uint16))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint16)


def tiktoken_pool(docs: list[str], workers: int, chunk_docs: int = 64) -> int:
    """Tokens of `docs` encoded by a fresh Pool of `workers` processes (started inside the timing, as
    prepare's own must be), each calling tiktoken's encode_ordinary_batch on chunks of documents."""
    import multiprocessing

    chunks = [docs[i : i + chunk_docs] for i in range(0, len(docs), chunk_docs)]
    with multiprocessing.Pool(workers, initializer=_init_worker) as pool:
        return sum(len(a) for a in pool.imap(_encode_chunk, chunks))


def _manifest_tokens(manifest: dict, out_dir: Path) -> int:
    """Token count from prepare's manifest, or from the size of the uint16 shards it wrote."""
    for key in ("tokens", "num_tokens", "total_tokens", "n_tokens"):
        if isinstance(manifest.get(key), int):
            return manifest[key]
    splits = manifest.get("splits")
    if isinstance(splits, dict):
        counts = [v.get("tokens") for v in splits.values() if isinstance(v, dict)]
        if counts and all(isinstance(c, int) for c in counts):
            return sum(counts)
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.suffix in (".bin", ".npy"))
    return size // 2


def bench_prepare(corpus: Path, workers: int, repeats: int, work_dir: Path, split_docs_on: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    import shutil

    from gptscratch.data.prepare import prepare

    docs = read_documents(str(corpus), split_docs_on)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    counts: dict[str, int] = {}

    def run_prepare() -> None:
        out = work_dir / "prepared"
        shutil.rmtree(out, ignore_errors=True)
        manifest = prepare(str(corpus), out, workers=workers, split_docs_on=split_docs_on, progress=False)
        counts["prepare"] = _manifest_tokens(manifest if isinstance(manifest, dict) else {}, out)

    def run_tiktoken() -> None:
        counts["tiktoken"] = tiktoken_pool(docs, workers)

    log("  warm-up")
    run_tiktoken()  # also warms the page cache for prepare's reads
    run_prepare()
    log(f"  tokens: prepare {counts['prepare']:,}, raw tiktoken {counts['tiktoken']:,}")
    runs = {"gptscratch prepare": (run_prepare, counts["prepare"], repeats),
            "raw tiktoken": (run_tiktoken, counts["tiktoken"], repeats)}
    rates = alternate(runs, torch.device("cpu"), log)
    shutil.rmtree(work_dir / "prepared", ignore_errors=True)
    result = {"corpus": str(corpus), "documents": len(docs), "bytes": n_bytes, "workers": workers,
              "prepare": {**_summary(rates["gptscratch prepare"]), "tokens": counts["prepare"]},
              "tiktoken": {**_summary(rates["raw tiktoken"]), "tokens": counts["tiktoken"]}}
    result["ratio"] = result["prepare"]["tokens_per_s"] / result["tiktoken"]["tokens_per_s"]
    return result


def print_prepare(result: dict, machine: str) -> None:
    print(f"bench prepare: {result['corpus']} ({result['documents']} documents, {result['bytes'] / 1e6:.1f} MB), "
          f"{result['workers']} worker(s)")
    print(machine)
    print(f"{'implementation':<20} {'tokens/s':>12} {'min':>12} {'max':>12} {'tokens':>12}")
    for label, key in (("gptscratch prepare", "prepare"), ("raw tiktoken", "tiktoken")):
        r = result[key]
        print(f"{label:<20} {r['tokens_per_s']:>12.0f} {r['min']:>12.0f} {r['max']:>12.0f} {r['tokens']:>12,}")
    print(f"ratio prepare / raw tiktoken: {result['ratio']:.3f}x (medians of {result['prepare']['repeats']} "
          "alternating repeats)")
    sys.stdout.flush()


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.workers < 1 or args.docs < 1 or args.doc_chars < 1:
        raise UserError("--repeats, --workers, --docs and --doc-chars must be at least 1")
    info = machine_info(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="gptscratch-bench-") as tmp:
        work = Path(tmp)
        if args.corpus:
            corpus = Path(args.corpus).expanduser()
        else:
            corpus = synthetic_corpus(work / "corpus", args.docs, args.doc_chars, seed=args.seed)
        result = bench_prepare(corpus, args.workers, args.repeats, work, split_docs_on=args.split_docs_on,
                               log=_quiet_log(not args.quiet))
        if not args.corpus:
            result["corpus"] = f"synthetic ({args.docs} docs x {args.doc_chars} chars, seed {args.seed})"
    print_prepare(result, describe_machine(info))
    if args.json:
        _print_json({"bench": "prepare", "machine": info, **result})
    return 0


# ---------------------------------------------------------------------------------------------------------
# gpu: the one prepared run on a lent GPU


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
    from gptscratch import mfu

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
            tmp = out_dir / "gpu_summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
            os.replace(tmp, out_dir / "gpu_summary.json")

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
    batch_sizes = _int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes else plan["batch_sizes"]

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
    _print_json({"bench": "gpu", **summary})
    return 0 if not failed else 1


# ---------------------------------------------------------------------------------------------------------
# command line


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers like 1,8") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: expected positive integers like 1,8")
    return values


def _check_counts(args: argparse.Namespace) -> None:
    for flag in ("repeats", "steps_per_repeat", "warmup"):
        if getattr(args, flag, 1) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected at least 1")


def _warn_bf16(device: torch.device, dtype: torch.dtype) -> None:
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_bf16():
        print("note: this CPU has no native bf16 (AVX512-BF16/AMX); bf16 will be emulated and slow", flush=True)


def _add_shape_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default=default_preset,
                   help=f"model shape (default {default_preset}); the flags below override parts of it")
    p.add_argument("--n-layer", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--n-embd", type=int)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--repeats", type=int, default=5, help="measured repeats per implementation (default 5)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true", help="no per-repeat progress lines")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "train", help="training-step tokens/s against transformers' GPT2LMHeadModel",
        description="Tokens/s of a full training step (forward, loss, backward, AdamW) for gptscratch and "
                    "transformers' GPT2LMHeadModel (sdpa) on the same weights, shapes, dtype and compile setting, "
                    "alternating A B A B. transformers gets labels=x and shifts them itself.")
    _add_shape_args(p, "small")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--vocab-size", type=int, help="vocabulary (both models; no further padding)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--steps-per-repeat", type=int, default=2, help="training steps per timed repeat (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation first (default 2)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "generate", help="generation tokens/s: KV cache, no cache, transformers' generate",
        description="Tokens/s of sampling (top-k) with gptscratch's KV cache, without it, and with transformers' "
                    "generate(use_cache=True) on the same weights and dtype (bf16 = weights cast to bf16).")
    _add_shape_args(p, "gpt2-124m")
    p.set_defaults(repeats=3)
    p.add_argument("--batch-sizes", default="1,8", help="prompts per batch, comma-separated (default 1,8)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--uncached-repeats", type=int, default=1,
                   help="repeats of the slow uncached path (default 1; 0 skips it)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "prepare", help="gptscratch prepare tokens/s against raw tiktoken with the same workers",
        description="Tokens/s of gptscratch's data preparation on a local corpus against raw tiktoken "
                    "encode_ordinary_batch over the same documents in a multiprocessing.Pool of as many workers.")
    p.add_argument("--corpus", help="a local source prepare reads: a directory of .txt files (one document each), a "
                                    "file or a glob (default: a synthetic corpus)")
    p.add_argument("--split-docs-on", help="separator between documents inside a .txt file (as in prepare)")
    p.add_argument("--docs", type=int, default=4000, help="synthetic corpus: documents (default 4000, about 20 MB)")
    p.add_argument("--doc-chars", type=int, default=5000, help="synthetic corpus: characters each (default 5000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for both (default: cores)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "gpu", help="the prepared GPU run (benchmarks/gpu.sh): peak, bandwidth, 124M training, generation",
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


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against transformers and tiktoken (train, generate, prepare)",
                       description="Benchmarks of gptscratch against its references; see benchmarks/RESULTS.md.")
    add_commands(p.add_subparsers(dest="bench_command", metavar="BENCH"))
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def main(argv: list[str] | None = None) -> int:
    """`python -m gptscratch.bench ...`: the same commands without importing the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m gptscratch.bench", description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="bench_command", metavar="BENCH"))
    args = parser.parse_args(argv)
    from gptscratch.cli import dispatch  # argparse and the error type only: no other module is imported

    return dispatch(parser, args, f"bench {args.bench_command}")


if __name__ == "__main__":
    raise SystemExit(main())
