"""`gptscratch chat`: a conversation with a chat model in the terminal, each reply streamed as it is sampled.

Every turn renders the whole conversation (`chat.render_prompt`) and samples until `<|assistant_end|>`. When
the conversation outgrows the model's context, its oldest exchanges are dropped (a system message stays), so
the model always reads whole turns from a conversation's start. `/new` starts over; end of input (Ctrl-D)
or `/quit` ends it.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Callable
from typing import TextIO

import torch

from gptscratch.chat import check_chat_model, decode_reply, render_prompt
from gptscratch.device import pick_device
from gptscratch.errors import UserError
from gptscratch.generate import check_sampling, generate
from gptscratch.hf.pretrained import add_model_args, check_model_args, load_model_arg, model_name
from gptscratch.model import GPT
from gptscratch.precision import DTYPE_HELP, DTYPES, autocast_dtype
from gptscratch.tokenizer import Tokenizer, gpt2

Message = dict[str, str]
HELP = "/new starts a new conversation, /quit (or Ctrl-D) ends"


def fit(messages: list[Message], context: int, room: int, tok: Tokenizer | None = None) -> list[Message] | None:
    """The newest part of `messages` whose prompt leaves `room` tokens for the reply within `context`: whole
    user-assistant exchanges dropped from the start, a system message kept; None when the last message alone
    does not fit."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while rest:
        if len(render_prompt(system + rest, tok)) + room <= context:
            return system + rest
        rest = rest[2:]
    return None


def reply(model: GPT, messages: list[Message], max_new_tokens: int, temperature: float = 0.0,
          top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
          amp: torch.dtype | None = None, on_text: Callable[[str], None] | None = None,
          tok: Tokenizer | None = None) -> str:
    """The assistant's next reply to `messages` (ending with the user's), sampled until `<|assistant_end|>` or
    `max_new_tokens`; `on_text` gets its text as it comes (multi-byte characters whole). `tok`: the model's
    tokenizer (GPT-2's with the chat tokens by default)."""
    tok = tok or gpt2(chat=True)
    prompt = render_prompt(messages, tok)
    device = model.lm_head.weight.device
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def stream(ids: torch.Tensor) -> None:
        t = int(ids[0])
        if on_text is not None and t < tok.eot:  # special tokens are no text
            on_text(decoder.decode(tok.enc.decode_single_token_bytes(t)))

    out = generate(model, torch.tensor([prompt], device=device), max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=top_p, generator=generator, stop_token=tok.assistant_end, on_token=stream,
                   amp=amp)
    if on_text is not None:
        on_text(decoder.decode(b"", final=True))
    return decode_reply(out[0, len(prompt):].tolist(), tok)


def talk(model: GPT, stdin: TextIO, stdout: TextIO, *, system: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.6, top_k: int | None = 50, top_p: float | None = None, seed: int = 1337,
         amp: torch.dtype | None = None, interactive: bool = False, tok: Tokenizer | None = None) -> int:
    """Read a line, answer it, until end of input; `interactive` (a terminal): a `> ` prompt and line editing."""
    context = model.config.block_size
    start: list[Message] = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    generator = torch.Generator(device=model.lm_head.weight.device).manual_seed(seed)

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    while True:
        try:  # a terminal gets input()'s line editing; a pipe is read line by line
            line = input("> ") + "\n" if interactive else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            line = ""
        if not line:  # end of input: Ctrl-D, or Ctrl-C at the prompt
            if interactive:
                write("\n")
            return 0
        text = line.rstrip("\n")
        if text.strip() in ("/quit", "/exit"):
            return 0
        if text.strip() == "/new":
            messages = list(start)
            write("(a new conversation)\n")
            continue
        if text.strip() in ("/help", "/?"):
            write(HELP + "\n")
            continue
        if not text.strip():
            continue
        room = min(max_new_tokens, max(1, context // 2))  # a long conversation still leaves room for a reply
        fitted = fit([*messages, {"role": "user", "content": text}], context, room, tok)
        if fitted is None:
            write(f"(that message is longer than the model's context of {context} tokens allows; try a shorter one)\n")
            continue
        messages = fitted
        budget = min(max_new_tokens, context - len(render_prompt(messages, tok)))
        try:
            answer = reply(model, messages, budget, temperature, top_k, top_p, generator, amp, on_text=write, tok=tok)
        except KeyboardInterrupt:
            write("\n(stopped)\n")
            messages.pop()  # the exchange never finished: the next turn starts from the last whole one
            continue
        write("\n")
        if answer.strip():
            messages.append({"role": "assistant", "content": answer})
        else:  # an empty reply makes no turn the chat format can hold
            messages.pop()
            write("(no reply)\n")


# --- gptscratch chat ----------------------------------------------------------------------------


def cmd_chat(args: argparse.Namespace) -> int:
    check_model_args(args)
    check_sampling(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if args.system is not None and not args.system.strip():
        raise UserError("--system: the system message is empty; give some text or leave it out")
    device = pick_device(args.device)
    model, tok = load_model_arg(args, device)
    check_chat_model(tok, f"--{'hf' if args.hf else 'ckpt'} {args.hf or args.ckpt}")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {model_name(args)} ({model.config.block_size}-token context); {HELP}", file=sys.stderr)
    return talk(model, sys.stdin, sys.stdout, system=args.system, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                amp=autocast_dtype(args.dtype, device), interactive=interactive, tok=tok)


def register(sub) -> None:
    p = sub.add_parser("chat", help="talk to a chat model in the terminal, each reply streamed",
                       description="A conversation with a chat model (trained with --preset sft): each line you type "
                       "is the user's turn, and the reply streams until the model ends its turn. /new starts a new "
                       "conversation; Ctrl-D (end of input) or /quit ends. Reads lines from a pipe too.")
    add_model_args(p)
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message opening every conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.6, help="0 for greedy decoding (default 0.6)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (default 50)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the smallest set of mass P")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help=f"{DTYPE_HELP} (default float32, as sample's)")
    p.set_defaults(func=cmd_chat)
