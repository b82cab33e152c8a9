"""The tokenizer of an export in the files transformers reads, so that it loads with `AutoTokenizer` offline.

Two cases. A model on GPT-2's vocabulary (`write_tokenizer`) gets the five files transformers' own GPT-2
directory holds: vocab.json and merges.txt (OpenAI's encoder.json and vocab.bpe, byte for byte), tokenizer.json
(the same BPE for the `tokenizers` library: byte-level pre-tokenizer and decoder) and two small configs, all
written from the vocabulary files gptscratch already ships, so an export needs no hub and encodes exactly as
`gptscratch.tokenizer.get_encoding()` does. A chat model's export (`chat.is_chat_model`: its vocabulary holds
the chat tokens) also carries the four chat tokens as added special tokens, a chat template that renders a
conversation as `chat.render_prompt` does, and `<|assistant_end|>` among its end-of-sequence ids, so
`apply_chat_template` and `generate` work as `gptscratch chat` does. A base model's export has none of these:
its tokenizer would otherwise hand out ids its embedding has no rows for.

A model on a tokenizer of its own (`gptscratch tokenizer train`, a `tiktoken.Encoding`: `write_trained_tokenizer`)
gets tokenizer.json and the two configs, for transformers' generic `PreTrainedTokenizerFast`: the BPE translated
from tiktoken's mergeable ranks (`trained_tokenizer_json`), its own split pattern, and its five special tokens,
which always include the chat tokens, so the chat template comes along. It encodes exactly as the Encoding does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import tiktoken

from gptscratch.chat import CHAT_TOKENS, is_chat_model
from gptscratch.io import write_json
from gptscratch.tokenizer import EOT_TOKEN, Tokenizer, gpt2_for, vocab_files

EOT = "<|endoftext|>"
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
TRAINED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# chat.render_prompt in Jinja: <|endoftext|>, the system message opening the first user turn, then the turns
CHAT_TEMPLATE = (
    "{{- '<|endoftext|>' -}}{%- set ns = namespace(system='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] + '\n\n' -%}"
    "{%- elif m['role'] == 'user' -%}{{- '<|user_start|>' + ns.system + m['content'] + '<|user_end|>' -}}"
    "{%- set ns.system = '' -%}"
    "{%- else -%}{{- '<|assistant_start|>' + m['content'] + '<|assistant_end|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}"
)


def eos_token_id(config: Any, tok: Tokenizer | None = None) -> int | list[int]:
    """The ids that end generation in an export's config.json, for the model's tokenizer `tok` (GPT-2's by
    default): a chat model's reply ends at `<|assistant_end|>`."""
    tok = tok or gpt2_for(config.vocab_size)
    return [tok.eot, tok.assistant_end] if tok.chat else tok.eot


def _added(content: str, token_id: int) -> dict:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": content == EOT, "special": True}


def tokenizer_json(encoder: dict[str, int], merges: list[str], chat: bool = False) -> dict:
    """The `tokenizers` library's description of GPT-2's BPE: no normalizer, byte-level pre-tokenization with
    GPT-2's regex and no prefix space, and `<|endoftext|>` as the one special token (with `chat`, the chat
    tokens too)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(EOT, EOT_TOKEN), *(_added(t, i) for t, i in CHAT_TOKENS.items() if chat)],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": encoder,
                  "merges": merges},
    }


def write_tokenizer(out: Path, config: Any) -> None:
    """The five tokenizer files into `out` (a directory being written: `hf.save_hf`'s temporary one) for the
    model of `config` (a GPTConfig): its context is transformers' `model_max_length`."""
    chat = is_chat_model(config)
    vocab_bpe, encoder_json = vocab_files()
    shutil.copyfile(encoder_json, out / "vocab.json")
    shutil.copyfile(vocab_bpe, out / "merges.txt")
    encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    # vocab.bpe: a "#version" line, then one merge per line ("Ġ t"), in rank order
    merges = [line for line in Path(vocab_bpe).read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    write_json(out / "tokenizer.json", tokenizer_json(encoder, merges, chat), indent=None)
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", **specials, "model_max_length": config.block_size,
        "add_prefix_space": False, "add_bos_token": False, "errors": "replace", "clean_up_tokenization_spaces": False,
        **({"chat_template": CHAT_TEMPLATE} if chat else {}),
    })


# --- a tokenizer of the model's own ---------------------------------------------------------------


def byte_alphabet() -> list[str]:
    """GPT-2's spelling of the 256 bytes as printable characters, which the `tokenizers` library's ByteLevel
    pre-tokenizer and decoder use: a printable Latin-1 byte stands for itself, the 68 others (controls, space,
    DEL, no-break space, soft hyphen) take the characters from U+0100 on in byte order, so that a space is "Ġ"
    and a newline "Ċ"."""
    spelled, shifted = [], 0
    for b in range(256):
        if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b:
            spelled.append(chr(b))
        else:
            spelled.append(chr(0x100 + shifted))
            shifted += 1
    return spelled


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges for the `tokenizers` library's BPE that make it merge as tiktoken does: every split of every
    token into two tokens, in the rank order of the token they make.

    tiktoken merges, within a piece, the adjacent pair whose concatenation has the lowest rank, whichever split
    of that token the pair is, not only the one training learned ("abc" learned as "ab" + "c" is also made
    from "a" + "bc" where "bc" is a token), so every split must be a merge. A BPE ranks merges by their place
    in the list, so the splits of one token go in the order of their parts' ranks, as transformers'
    `TikTokenConverter` orders them. (Where two splits of one token could both merge in a piece, the list's
    order decides, where tiktoken takes the leftmost pair; no vocabulary tried, trained or drawn at random,
    had a text on which the two differ.)"""
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        merges += sorted(splits, key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
    return merges


def trained_tokenizer_json(enc: tiktoken.Encoding, pattern: str, special_tokens: dict[str, int]) -> dict:
    """The `tokenizers` library's description of the byte-level BPE `enc`: no normalizer, the split `pattern`
    then bytes spelled in GPT-2's alphabet (`byte_alphabet`), the vocabulary and merges from tiktoken's
    mergeable ranks (`bpe_merges`), and `special_tokens` as added special tokens.

    The `tokenizers` library's regex engine (Oniguruma) reads both split patterns as they are, possessive
    quantifiers (`++`, `?+`), `(?i:...)` and `\\p{N}{1,2}` included, and splits as tiktoken's does: `$` in
    GPT-2's `\\s++$` is end of line there, not end of text, but after all the whitespace a possessive `\\s++`
    takes, the next character is no newline, so it only matches at the end of the text either way.
    `ignore_merges` is on because tiktoken looks a whole piece up among the tokens before merging anything:
    a piece that is itself a token is that token, even where merging its bytes would end elsewhere."""
    ranks = enc._mergeable_ranks
    alphabet = byte_alphabet()

    def spell(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{**_added(content, token_id), "normalized": False}
                         for content, token_id in sorted(special_tokens.items(), key=lambda kv: kv[1])],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {spell(token): rank for token, rank in ranks.items()},
                  # "left right": no token spelled in the byte alphabet holds a space
                  "merges": [f"{spell(left)} {spell(right)}" for left, right in bpe_merges(ranks)]},
    }


def write_trained_tokenizer(out: Path, enc: tiktoken.Encoding, manifest: dict, block_size: int) -> None:
    """tokenizer.json and the two configs into `out` (a directory being written) for a model on the trained
    tokenizer `enc` with the manifest `bpe.save` wrote (its split pattern and special tokens) and a context of
    `block_size` (transformers' `model_max_length`).

    No vocab.json and merges.txt: they are what transformers' slow `GPT2Tokenizer` reads, and it splits with
    GPT-2's regex, not the tokenizer's own pattern; `PreTrainedTokenizerFast` reads tokenizer.json alone."""
    specials = manifest["special_tokens"]
    write_json(out / "tokenizer.json", trained_tokenizer_json(enc, manifest["pattern"], specials), indent=None)
    named = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    write_json(out / "special_tokens_map.json", named)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **named, "model_max_length": block_size,
        "add_bos_token": False, "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
    })
