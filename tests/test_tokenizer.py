"""tokenizer.py: GPT-2's BPE built offline, equal to tiktoken's own gpt2 encoding."""

import socket

import pytest
import tiktoken

from gptscratch import tokenizer


def test_known_ids():
    enc = tokenizer.get_encoding()
    assert enc.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert enc.eot_token == 50256 == tokenizer.EOT_TOKEN
    assert enc.n_vocab == 50257


def test_unicode_round_trip():
    enc = tokenizer.get_encoding()
    text = "naïve café — 日本語のテキスト, emoji 🤖🚀, Ελληνικά, עברית, tabs\tand\nnewlines  "
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_no_network_and_no_cache_writes(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tokenizer.get_encoding.cache_clear()
    enc = tokenizer.get_encoding()
    assert enc.encode("offline") == enc.encode_ordinary("offline")
    assert list(tmp_path.iterdir()) == []  # tiktoken's data-gym-cache was not written


def test_same_merges_as_tiktoken_gpt2_definition():
    """Our Encoding reproduces tiktoken's own gpt2 encoding on text the merges must get right."""
    enc = tokenizer.get_encoding()
    text = "  The quick brown fox's 12345 jumps!!! over\n\n the lazy dog\u00a0\u200b."
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert isinstance(enc, tiktoken.Encoding)
    assert max(ids) < 50257


def test_bad_vocab_file_is_reported(monkeypatch, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "vocab.bpe").write_text("not the real file")
    (bad / "encoder.json").write_text("{}")

    class Files:
        def __truediv__(self, name):
            return bad

    monkeypatch.setattr(tokenizer.importlib.resources, "files", lambda pkg: Files())
    tokenizer.get_encoding.cache_clear()
    try:
        with pytest.raises(tokenizer.UserError, match="vocab.bpe"):
            tokenizer.get_encoding()
    finally:
        tokenizer.get_encoding.cache_clear()
