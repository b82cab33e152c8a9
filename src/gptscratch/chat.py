"""The chat format: a conversation as token ids, and which of those ids the assistant writes.

A conversation is OpenAI's `messages` list (`[{"role": "user", "content": "Hi"}, {"role": "assistant", ...}]`),
rendered as nanochat renders it, with GPT-2's `<|endoftext|>` opening it (GPT-2's BPE has no other
beginning-of-sequence token):

    <|endoftext|><|user_start|>Hi<|user_end|><|assistant_start|>Hello!<|assistant_end|><|user_start|>...

A system message has no turn of its own: its text opens the first user turn, followed by a blank line. Turns
alternate user, assistant, user, ... from the first user turn on.

The four chat tokens take ids 50257-50260, rows that a model padded to a multiple of 64 (50,304 rows) already
has, so a GPT-2 checkpoint keeps its shape; a chat model is one whose vocabulary is those 50,261 tokens
(`is_chat_model`), which its checkpoint and its export both record. A tokenizer of your own (tokenizer.py) has
the same four right after its `<|endoftext|>` from the start, so every function here takes the model's
`Tokenizer` (GPT-2's with the chat tokens by default) and reads the ids from it. Message text is encoded as
ordinary text: a user who types `<|assistant_end|>` gets those characters, never the token.

The mask is 1 exactly on the tokens the assistant writes, its text and its `<|assistant_end|>`; the
`<|assistant_start|>` that opens its turn belongs to the prompt (`render_prompt` ends with it). Since no text
produces a chat token, the mask is a function of the ids alone (`assistant_mask`: a token is the assistant's
when the last chat token before it is `<|assistant_start|>`), so chat shards hold the ids only and their mask
can never disagree with them.

This module loads no torch: `prepare --chat` and its worker processes import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import tiktoken

from gptscratch.errors import UserError
from gptscratch.tokenizer import CHAT_VOCAB_SIZE, EOT_TOKEN, VOCAB_SIZE, Tokenizer, gpt2

# GPT-2's chat tokens; a trained tokenizer has the same four right after its own <|endoftext|> (Tokenizer.user_start...)
USER_START, USER_END, ASSISTANT_START, ASSISTANT_END = range(VOCAB_SIZE, VOCAB_SIZE + 4)
CHAT_TOKENS = {"<|user_start|>": USER_START, "<|user_end|>": USER_END, "<|assistant_start|>": ASSISTANT_START,
               "<|assistant_end|>": ASSISTANT_END}
ROLES = ("system", "user", "assistant")


class ChatFormatError(UserError):
    """A conversation that is not a valid `messages` list; the message names the message at fault, and
    whoever read it adds where it came from (a file and line, a request). `field` is that place as a path
    (`messages`, `messages[2]`, `messages[2].role`), for an API error's `param`."""

    def __init__(self, message: str, field: str = "messages"):
        super().__init__(message)
        self.field = field


def turns(messages: Any, ends_with: Literal["assistant", "user"]) -> list[tuple[str, str]]:
    """(role, text) of each turn of `messages`, checked, with a system message merged into the first user turn.

    `ends_with` is the role of the last message: a conversation to train on ends with the assistant's reply,
    a prompt with the user's message that the assistant is to answer.
    """
    if not isinstance(messages, list) or not messages:
        kind = "an empty list" if isinstance(messages, list) else _kind(messages)
        raise ChatFormatError(f"messages is {kind}; expected a non-empty list of "
                              "{\"role\": ..., \"content\": ...} objects")
    out: list[tuple[str, str]] = []
    system = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"messages[{i}] is {_kind(message)}; expected an object with role and content",
                                  f"messages[{i}]")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ChatFormatError(f"messages[{i}]: role {role!r}; expected one of {', '.join(ROLES)}",
                                  f"messages[{i}].role")
        if not isinstance(content, str):
            raise ChatFormatError(f"messages[{i}]: content is {_kind(content)}; expected text",
                                  f"messages[{i}].content")
        if not content.strip():
            raise ChatFormatError(f"messages[{i}]: the {role}'s content is empty", f"messages[{i}].content")
        if role == "system":
            if i != 0:
                raise ChatFormatError(f"messages[{i}]: a system message may only come first", f"messages[{i}].role")
            system = content
            continue
        expected = "user" if not out or out[-1][0] == "assistant" else "assistant"
        if role != expected:
            raise ChatFormatError(f"messages[{i}] is the {role}'s turn where the {expected}'s was due; turns "
                                  "alternate user, assistant, user, ... (after an optional system message)",
                                  f"messages[{i}].role")
        if system is not None:  # nanochat's way: the system text opens the first user turn
            content, system = f"{system}\n\n{content}", None
        out.append((role, content))
    if not out:
        raise ChatFormatError("messages holds only a system message; expected a user turn after it")
    if out[-1][0] != ends_with:
        raise ChatFormatError(f"messages ends with the {out[-1][0]}'s turn; expected the {ends_with}'s last"
                              + (" (a conversation to train on ends with a reply)" if ends_with == "assistant"
                                 else " (the prompt for a reply)"))
    return out


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _encode(turns_: Sequence[tuple[str, str]], tok: Tokenizer | None) -> tuple[list[int], list[int]]:
    tok = tok or gpt2(chat=True)
    ids, mask = [tok.eot], [0]
    for role, text in turns_:
        body = tok.enc.encode_ordinary(text)
        if role == "user":
            ids += [tok.user_start, *body, tok.user_end]
            mask += [0] * (len(body) + 2)
        else:
            ids += [tok.assistant_start, *body, tok.assistant_end]
            mask += [0] + [1] * (len(body) + 1)
    return ids, mask


def encode_conversation(messages: Any, tok: Tokenizer | None = None) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation that ends with the assistant's reply, in `tok` (GPT-2's by default): the mask
    is 1 exactly on the tokens the assistant writes (its text and its `<|assistant_end|>`). A bad conversation
    raises ChatFormatError."""
    return _encode(turns(messages, "assistant"), tok)


def render_prompt(messages: Any, tok: Tokenizer | None = None) -> list[int]:
    """The ids that ask a chat model for the next reply: the conversation up to the user's last message, then
    `<|assistant_start|>`. The reply ends with `<|assistant_end|>` (generation's stop token)."""
    tok = tok or gpt2(chat=True)
    ids, _ = _encode(turns(messages, "user"), tok)
    return [*ids, tok.assistant_start]


def assistant_mask(ids: np.ndarray, inside: bool | np.ndarray = False, eot: int = EOT_TOKEN) -> np.ndarray:
    """Which of `ids` (1-D, or 2-D rows) the assistant writes: those whose last preceding chat token (or
    `<|endoftext|>`, id `eot`: the chat tokens follow it) is `<|assistant_start|>`. `inside` says whether the ids
    before the first such token are inside an assistant turn: a row cut from the middle of a conversation (one per
    row for 2-D `ids`)."""
    ids = np.asarray(ids)
    n = ids.shape[-1]
    marks = np.where(ids >= eot, np.arange(n), -1)  # <|endoftext|> and the chat tokens
    last = np.maximum.accumulate(marks, axis=-1)  # the last mark at or before each position
    before = np.concatenate([np.full((*ids.shape[:-1], 1), -1), last[..., :-1]], axis=-1)  # strictly before
    kind = np.take_along_axis(ids, np.maximum(before, 0), axis=-1)
    inside = np.asarray(inside, dtype=bool)
    return np.where(before >= 0, kind == eot + 3, inside[..., None] if inside.ndim else inside)


def get_chat_encoding() -> tiktoken.Encoding:
    """GPT-2's BPE that also knows the chat tokens, for decoding a chat model's ids."""
    return gpt2(chat=True).enc


def decode_reply(ids: Sequence[int], tok: Tokenizer | None = None) -> str:
    """The text of a generated reply: the ids up to its `<|assistant_end|>`, special tokens left out."""
    tok = tok or gpt2(chat=True)
    ids = list(ids)
    if tok.assistant_end in ids:
        ids = ids[:ids.index(tok.assistant_end)]
    return tok.enc.decode([i for i in ids if i < tok.eot])


def is_chat_model(config: Any) -> bool:
    """Whether a model (its GPTConfig) knows the chat tokens: trained with `--chat` (`--preset sft`)."""
    return config.vocab_size == CHAT_VOCAB_SIZE


def check_chat_model(tok: Tokenizer, source: str) -> None:
    """Refuse, in one line, a model whose tokenizer has no chat tokens (a base GPT-2, say). A trained tokenizer
    always has them, so its models are accepted whether or not they were fine-tuned on conversations."""
    if not tok.chat:
        raise UserError(f"{source}: not a chat model (its vocabulary is {tok.vocab_size} tokens, without the chat "
                        "tokens); make one with `gptscratch train --preset sft --init-from MODEL --data DIR` on "
                        "conversations from `gptscratch prepare CORPUS --chat --out DIR`")
