"""GPT-2's tokenizer in the files transformers reads, so that an export loads with `AutoTokenizer` offline.

transformers' own GPT-2 directory holds vocab.json and merges.txt (OpenAI's encoder.json and vocab.bpe, byte
for byte), tokenizer.json (the same BPE for the `tokenizers` library: byte-level pre-tokenizer and decoder)
and two small configs. All five are written here from the vocabulary files gptscratch already ships, so an
export needs no hub and encodes exactly as `gptscratch.tokenizer.get_encoding()` does.

A chat model's export (`chat.is_chat_model`: its vocabulary holds the chat tokens) also carries the four chat
tokens as added special tokens, a chat template that renders a conversation as `chat.render_prompt` does, and
`<|assistant_end|>` among its end-of-sequence ids, so `apply_chat_template` and `generate` work as `gptscratch
chat` does. A base model's export has none of these: its tokenizer would otherwise hand out ids its embedding
has no rows for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gptscratch.chat import CHAT_TOKENS, is_chat_model
from gptscratch.io import write_json
from gptscratch.tokenizer import EOT_TOKEN, Tokenizer, gpt2, vocab_files

EOT = "<|endoftext|>"
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
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
    tok = tok or gpt2(chat=is_chat_model(config))
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


def write_trained_tokenizer(out: Path, enc: Any, manifest: dict, block_size: int) -> None:  # placeholder: helper
    raise NotImplementedError
