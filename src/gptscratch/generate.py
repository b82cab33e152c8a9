"""Text generation with a KV cache: one prefill over the prompt, then one-token decode steps.

Context longer than `block_size` is a sliding window over the last `block_size` tokens, exactly as
an uncached loop that crops its input. GPT-2's positions are absolute, so once the window slides the
cached keys no longer match their positions: from then on each step re-reads the window (correct,
and no slower than the uncached loop).
"""

from __future__ import annotations

import argparse
import codecs
import math
import sys
from collections.abc import Callable

import torch

from gptscratch.chat import is_chat_model
from gptscratch.device import pick_device
from gptscratch.errors import UserError
from gptscratch.hf.pretrained import add_model_args, check_model_args, load_model_arg
from gptscratch.model import GPT
from gptscratch.precision import DTYPE_HELP, DTYPES, autocast, autocast_dtype
from gptscratch.tokenizer import VOCAB_SIZE

# Below this temperature sampling is greedy, as OpenAI's API treats 0. softmax(logits / T) is already one-hot
# there for any gap between the top two logits above 1e-3 (e^-100), and a far smaller T would overflow float32
# (1e-300 rounds to 0 in it, and logits / 0 are NaN).
GREEDY_BELOW = 1e-5


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top k and outside the smallest set whose mass reaches top_p."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p. The first always stays, said
        # outright: a top_p below float32's smallest value compares as 0, which would drop it too.
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):  # NaN would sample from NaN probabilities
        raise UserError(f"--temperature {temperature}: expected a finite value >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k {top_k}: expected an integer >= 1")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise UserError(f"--top-p {top_p}: expected a value in (0, 1]")


def next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick one token per row from last-position logits (B, vocab). Below GREEDY_BELOW the temperature is
    greedy; any top_p > 0 keeps at least the most likely token."""
    logits = logits.float()
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    if top_k is not None and top_k < logits.size(-1):
        # Sample among the k candidates only: the same distribution as masking the rest to -inf, but
        # multinomial then draws over k entries instead of the whole vocabulary (10 ms a step at batch 8).
        values, ids = torch.topk(logits / temperature, top_k, dim=-1)
        probs = filter_logits(values, top_p=top_p).softmax(dim=-1)
        return ids.gather(1, torch.multinomial(probs, 1, generator=generator)).squeeze(1)
    probs = filter_logits(logits / temperature, top_p=top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    stop_token: int | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """Extend each row of `idx` (B, T) by up to `max_new_tokens` tokens and return (B, T + n).

    temperature=0 is greedy. With `stop_token`, a row that produced it keeps producing it (so the batch
    stays rectangular) and generation ends once every row has. `on_token` gets each step's (B,) tokens.
    `amp` is the autocast dtype of the forward passes (None: float32), from `gptscratch.precision`; the
    KV cache is kept in it.
    """
    check_sampling(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise UserError("the prompt encodes to no tokens; give at least one token of text")
    config = model.config
    was_training = model.training
    model.eval()
    block = config.block_size
    vocab = config.vocab_size if is_chat_model(config) else min(config.vocab_size, VOCAB_SIZE)
    cache = None
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            with autocast(idx.device, amp):
                if not use_cache:
                    logits, _ = model(idx[:, -block:], last_only=True)
                elif cache is None or cache.pos >= block:
                    # (re)fill: the first step, or the window slid past the position table
                    cache = model.new_cache(idx.size(0), device=idx.device, dtype=amp)
                    logits, _ = model(idx[:, -block:], cache=cache, last_only=True)
                else:
                    logits, _ = model(idx[:, -1:], cache=cache, last_only=True)
            # neither padded rows nor ids the tokenizer lacks (a model trained with vocab_size 50304) are sampled;
            # a chat model's tokenizer has the chat tokens, which end its replies
            logits = logits[:, -1, :vocab]
            tok = next_token(logits, temperature, top_k, top_p, generator)
            if stop_token is not None:
                tok = torch.where(done, torch.full_like(tok, stop_token), tok)
                done |= tok == stop_token
            idx = torch.cat([idx, tok[:, None]], dim=1)
            if on_token is not None:
                on_token(tok)
            if stop_token is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)
    return idx


# --- gptscratch sample ---------------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> int:
    check_model_args(args)
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError("--max-new-tokens and --num-samples must be at least 1")
    device = pick_device(args.device)
    model, tokenizer = load_model_arg(args, device)
    amp = autocast_dtype(args.dtype, device)
    # a chat model may sample chat tokens, shown by name; its prompt may hold them too
    enc = tokenizer.enc
    prompt = enc.encode(args.prompt, allowed_special=enc.special_tokens_set)
    if not prompt:
        raise UserError("--prompt encodes to no tokens; give some text (or '<|endoftext|>' to start fresh)")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = sys.stdout
    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"--- sample {i + 1} ---\n")
        out.write(args.prompt)
        out.flush()
        # tokens can split a multi-byte character: decode bytes incrementally
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def stream(tok: torch.Tensor, decoder=decoder) -> None:
            t = int(tok[0])
            if t != tokenizer.eot:
                out.write(decoder.decode(enc.decode_single_token_bytes(t)))
                out.flush()

        idx = torch.tensor([prompt], dtype=torch.long, device=device)
        generate(
            model, idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            generator=gen, stop_token=None if args.no_stop else tokenizer.eot, on_token=stream, amp=amp,
        )
        out.write(decoder.decode(b"", final=True) + "\n")
        out.flush()
    return 0


def register(sub) -> None:
    p = sub.add_parser("sample", help="generate text from a model, streamed to the terminal",
                       description="Generate text with a KV cache and stream it to the terminal.")
    add_model_args(p)
    p.add_argument("--prompt", default="<|endoftext|>", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=1.0, help="0 (or anything below 1e-5) for greedy decoding")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set of mass P")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-stop", action="store_true", help="keep going past <|endoftext|>")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help=f"{DTYPE_HELP}. Default float32: decoding a token at a time is bound by reading the "
                   "weights, which autocast would cast to bf16 again at every step")
    p.set_defaults(func=cmd_sample)
