"""gptscratch against transformers' GPT2LMHeadModel: a training step, and generation.

- train: one full training step (forward, loss, backward, AdamW step) of our GPT against transformers'
  GPT2LMHeadModel (sdpa attention) holding the same weights, with the same two AdamW parameter groups,
  shapes, dtype (bf16 = autocast for both) and compile setting.
- generate: tokens/s of our `generate` with and without its KV cache against transformers'
  `generate(use_cache=True, do_sample=True, top_k=50)` on the same weights and dtype.

One detail of the training comparison: transformers' loss shifts `labels` internally, so it is given
labels = the inputs x (B, T) and scores the T-1 targets that x itself contains, while ours gets
targets = y (x shifted by one) and scores all T. Both run the forward, the LM head and the backward over
all B x T positions (transformers ignores the last position's logits in its loss), so the work differs by
one row of cross-entropy per sequence, and tokens/s counts B x T input tokens for both.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from benchmarks.harness import (
    PeakMemory,
    alternate,
    check_counts,
    describe_machine,
    int_list,
    machine_info,
    mib,
    print_json,
    quiet_log,
    summary,
    sync,
    warn_bf16,
)
from gptscratch import mfu
from gptscratch.device import pick_device
from gptscratch.errors import UserError
from gptscratch.generate import generate
from gptscratch.hf.gpt2 import config_to_hf, to_hf_state_dict
from gptscratch.mfu import flops_per_token
from gptscratch.model import GPT, GPTConfig
from gptscratch.precision import autocast
from gptscratch.train.optim import configure_optimizer

# Training shapes. vocab 50304 = GPT-2's 50257 padded to a multiple of 64 (as nanoGPT's model.py); gpt2-124m keeps
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


def hf_twin(model, attn_implementation: str = "sdpa"):
    """transformers' GPT2LMHeadModel holding exactly `model`'s weights (padded vocab rows included)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise UserError("the benchmarks compare against transformers: pip install 'gptscratch[hf]'") from None

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


def _gpt_config(shape: Shape, block_size: int) -> GPTConfig:
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
        result[name] = {**summary(rates[name]), "peak_mem_bytes": memory[name], "first_loss": first_loss[name],
                        "warmup_s": round(warmup_s[name], 2)}
    result["ratio"] = result["gptscratch"]["tokens_per_s"] / result["transformers"]["tokens_per_s"]
    # each repeat of ours against the one of theirs right after it: drift the two shared cancels here, so
    # the spread of these says how far the ratio of medians can be trusted on this machine
    result["pair_ratios"] = [round(a / b, 4) for a, b in zip(rates["gptscratch"], rates["transformers"], strict=True)]
    return result


def print_train(result: dict, machine: str, peak: float | None = None) -> None:
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
              f"{steps_ms(r['tokens_per_s']):>9.1f} {mib(r['peak_mem_bytes']):>9} {r['first_loss']:>10.4f}")
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
    shape = resolve_shape(args)
    check_counts(args)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    warn_bf16(device, dtype)
    info = machine_info(device)
    result = bench_train(shape, device, dtype, args.compile, args.repeats, args.steps_per_repeat, args.warmup,
                         seed=args.seed, log=quiet_log(not args.quiet))
    peak = mfu.peak_flops(device) if device.type == "cuda" else None
    print_train(result, describe_machine(info), peak)
    if device.type == "cuda" and peak is None:
        print(f"unknown GPU {info['gpu']!r}, no MFU")
    if args.json:
        print_json({"bench": "train", "preset": args.preset, "machine": info, **result})
    return 0


# ---------------------------------------------------------------------------------------------------------
# generate


def bench_generate(shape: Shape, device: torch.device, dtype: torch.dtype, batch_sizes: list[int], new_tokens: int,
                   prompt_len: int, repeats: int, uncached_repeats: int, top_k: int = 50, seed: int = 1337,
                   log: Callable[[str], None] = print) -> dict:
    """Generation tokens/s: ours with and without the KV cache, and transformers' generate, same weights."""
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
            rows.append({"batch": b, "impl": name, **summary(rates[name])})
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
    check_counts(args)
    if args.new_tokens < 1 or args.prompt_len < 1 or args.uncached_repeats < 0:
        raise UserError("--new-tokens and --prompt-len must be at least 1, --uncached-repeats at least 0")
    batch_sizes = int_list(args.batch_sizes, "--batch-sizes")
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    warn_bf16(device, dtype)
    info = machine_info(device)
    result = bench_generate(shape, device, dtype, batch_sizes, args.new_tokens, args.prompt_len, args.repeats,
                            args.uncached_repeats, top_k=args.top_k, seed=args.seed, log=quiet_log(not args.quiet))
    print_generate(result, describe_machine(info))
    if args.json:
        print_json({"bench": "generate", "preset": args.preset, "machine": info, **result})
    return 0


def add_shape_args(p: argparse.ArgumentParser, default_preset: str) -> None:
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


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "train", help="training-step tokens/s against transformers' GPT2LMHeadModel",
        description="Tokens/s of a full training step (forward, loss, backward, AdamW) for gptscratch and "
                    "transformers' GPT2LMHeadModel (sdpa) on the same weights, shapes, dtype and compile setting, "
                    "alternating A B A B. transformers gets labels=x and shifts them itself.")
    add_shape_args(p, "small")
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
    add_shape_args(p, "gpt2-124m")
    p.set_defaults(repeats=3)
    p.add_argument("--batch-sizes", default="1,8", help="prompts per batch, comma-separated (default 1,8)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--uncached-repeats", type=int, default=1,
                   help="repeats of the slow uncached path (default 1; 0 skips it)")
    p.set_defaults(func=cmd_generate)
