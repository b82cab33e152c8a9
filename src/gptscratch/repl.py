"""`gptscratch chat`: a conversation with a chat model in the terminal, each reply streamed as it is sampled.

Every turn renders the whole conversation (`chat.render_prompt`) and samples until `<|assistant_end|>`. When
the conversation outgrows the model's context, its oldest exchanges are dropped (a system message stays), so
the model always reads whole turns from a conversation's start. `/new` starts over; end of input (Ctrl-D)
or `/quit` ends it.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import TextIO

import torch

from gptscratch.chat import ASSISTANT_END, decode_reply, render_prompt
from gptscratch.generate import generate
from gptscratch.model import GPT
from gptscratch.tokenizer import EOT_TOKEN, get_encoding

Message = dict[str, str]
HELP = "/new starts a new conversation, /quit (or Ctrl-D) ends"


def fit(messages: list[Message], context: int, room: int) -> list[Message] | None:
    """The newest part of `messages` whose prompt leaves `room` tokens for the reply within `context`: whole
    user-assistant exchanges dropped from the start, a system message kept; None when the last message alone
    does not fit."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while rest:
        if len(render_prompt(system + rest)) + room <= context:
            return system + rest
        rest = rest[2:]
    return None


def reply(model: GPT, messages: list[Message], max_new_tokens: int, temperature: float = 0.0,
          top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
          amp: torch.dtype | None = None, on_text: Callable[[str], None] | None = None) -> str:
    """The assistant's next reply to `messages` (ending with the user's), sampled until `<|assistant_end|>` or
    `max_new_tokens`; `on_text` gets its text as it comes (multi-byte characters whole)."""
    prompt = render_prompt(messages)
    device = model.lm_head.weight.device
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    enc = get_encoding()

    def stream(tok: torch.Tensor) -> None:
        t = int(tok[0])
        if on_text is not None and t < EOT_TOKEN:  # chat tokens are no text
            on_text(decoder.decode(enc.decode_single_token_bytes(t)))

    out = generate(model, torch.tensor([prompt], device=device), max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=top_p, generator=generator, stop_token=ASSISTANT_END, on_token=stream, amp=amp)
    if on_text is not None:
        on_text(decoder.decode(b"", final=True))
    return decode_reply(out[0, len(prompt):].tolist())


def talk(model: GPT, stdin: TextIO, stdout: TextIO, *, system: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.6, top_k: int | None = 50, top_p: float | None = None, seed: int = 1337,
         amp: torch.dtype | None = None, interactive: bool = False) -> int:
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
        fitted = fit([*messages, {"role": "user", "content": text}], context, room)
        if fitted is None:
            write(f"(that message is longer than the model's context of {context} tokens allows; try a shorter one)\n")
            continue
        messages = fitted
        budget = min(max_new_tokens, context - len(render_prompt(messages)))
        try:
            answer = reply(model, messages, budget, temperature, top_k, top_p, generator, amp, on_text=write)
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
