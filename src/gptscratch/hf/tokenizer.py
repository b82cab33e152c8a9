"""GPT-2's tokenizer in the files transformers reads, so that an export loads with `AutoTokenizer` offline.

transformers' own GPT-2 directory holds vocab.json and merges.txt (OpenAI's encoder.json and vocab.bpe, byte
for byte), tokenizer.json (the same BPE for the `tokenizers` library: byte-level pre-tokenizer and decoder)
and two small configs. All five are written here from the vocabulary files gptscratch already ships, so an
export needs no hub and encodes exactly as `gptscratch.tokenizer.get_encoding()` does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gptscratch.io import write_json
from gptscratch.tokenizer import EOT_TOKEN, vocab_files

EOT = "<|endoftext|>"
FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def tokenizer_json(encoder: dict[str, int], merges: list[str]) -> dict:
    """The `tokenizers` library's description of GPT-2's BPE: no normalizer, byte-level pre-tokenization with
    GPT-2's regex and no prefix space, and `<|endoftext|>` as the one special token."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": EOT_TOKEN, "content": EOT, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": encoder,
                  "merges": merges},
    }


def write_tokenizer(out: Path, context: int) -> None:
    """The five tokenizer files into `out` (a directory being written: `hf.save_hf`'s temporary one);
    `context` is the model's, transformers' `model_max_length`."""
    vocab_bpe, encoder_json = vocab_files()
    shutil.copyfile(encoder_json, out / "vocab.json")
    shutil.copyfile(vocab_bpe, out / "merges.txt")
    encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    # vocab.bpe: a "#version" line, then one merge per line ("Ġ t"), in rank order
    merges = [line for line in Path(vocab_bpe).read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    write_json(out / "tokenizer.json", tokenizer_json(encoder, merges), indent=None)
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", **specials, "model_max_length": context, "add_prefix_space": False,
        "add_bos_token": False, "errors": "replace", "clean_up_tokenization_spaces": False,
    })
