"""`tokenizer train` and `tokenizer eval`: a byte-level BPE learned from a small corpus, saved, loaded, weighed.

Checked against what does not go through the code under test: tiktoken's own loader for the ranks file, hashlib
for the manifest's hash, `len(text.encode()) / len(ids)` for bytes per token, GPT-2's published encoding.
"""

import hashlib
import json
import random

import pytest
import tiktoken.load

from gptscratch import bpe
from gptscratch.cli import main
from gptscratch.tokenizer import get_encoding

pytest.importorskip("rustbpe")

WORDS = ["the", "token", "tokenizer", "merge", "byte", "pair", "encoding", "corpus", "héllo", "naïve", "日本語",
         "東京", "😀", "🚀", "12", "345", "6789", "def", "return", "x = 1", "\t", "  "]
SAMPLES = ["Hello, world!", "naïve café — déjà vu", "日本語のテキスト", "emoji 😀🚀👩‍👩‍👧 and ZWJ",
           "  leading, trailing and\t\ttabs \n\n\r\n  ", "digits 0123456789 3.14159 -42 1e10", "\x00\x7f\ufffd",
           "unseen: Ωμέγα ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", ""]


def corpus_text(seed: int, n: int = 400) -> str:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))) for _ in range(n)]
    # special tokens' spellings many times over: frequent enough that a trainer seeing them would merge them
    return "<|endoftext|>".join(lines) + "<|user_start|>hi<|user_end|><|assistant_start|>yo<|assistant_end|>" * 200


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bpe")
    (root / "train.txt").write_text(corpus_text(0), encoding="utf-8")
    (root / "heldout.txt").write_text(corpus_text(1, 100), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def trained(corpus):
    enc, manifest = bpe.train(str(corpus / "train.txt"), 320, progress=False)
    out = corpus / "tok"
    manifest = bpe.save(enc, manifest, out)
    return enc, manifest, out


def test_the_trained_vocabulary_has_exactly_vocab_size_ids_every_byte_among_them(trained):
    enc, manifest, _ = trained
    assert enc.n_vocab == manifest["vocab_size"] == 320
    ids = sorted([*enc._mergeable_ranks.values(), *enc._special_tokens.values()])
    assert ids == list(range(320))
    assert {bytes([b]) for b in range(256)} <= set(enc._mergeable_ranks)


def test_any_string_round_trips_exactly(trained):
    enc, _, _ = trained
    for text in [*SAMPLES, bytes(range(32, 127)).decode()]:
        assert enc.decode(enc.encode_ordinary(text)) == text
        assert b"".join(enc.decode_single_token_bytes(i) for i in enc.encode_ordinary(text)) == text.encode()


def test_the_merges_compress_the_corpus(trained, corpus):
    enc, _, _ = trained
    text = (corpus / "heldout.txt").read_text(encoding="utf-8")
    assert len(enc.encode_ordinary(text)) < 0.8 * len(text.encode())


def test_special_tokens_are_single_ids_after_the_merges_and_never_inside_a_merge(trained):
    enc, _, _ = trained
    n_merged = 320 - len(bpe.SPECIAL_TOKENS)
    for i, special in enumerate(bpe.SPECIAL_TOKENS):
        assert enc.encode(special, allowed_special="all") == [n_merged + i]
    # the corpus spells them hundreds of times and nothing else holds "<|", "|>" or these words
    learned = [t for t in enc._mergeable_ranks if len(t) > 1]
    for piece in (b"<|", b"|>", b"endoftext", b"user_start", b"assistant"):
        assert [t for t in learned if piece in t] == []


def test_a_loaded_tokenizer_encodes_as_the_trained_one(trained, corpus):
    enc, _, out = trained
    loaded = bpe.load(out)
    text = (corpus / "heldout.txt").read_text(encoding="utf-8") + "".join(SAMPLES)
    assert loaded.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert loaded._pat_str == bpe.GPT4_PATTERN and loaded.n_vocab == 320


def test_the_ranks_file_is_tiktokens_format_and_the_manifest_holds_its_sha256(trained, monkeypatch):
    enc, manifest, out = trained
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file itself, no cache
    assert tiktoken.load.load_tiktoken_bpe(str(out / bpe.RANKS_FILE)) == enc._mergeable_ranks
    on_disk = json.loads((out / bpe.MANIFEST).read_text())
    assert on_disk == manifest
    assert on_disk["ranks_sha256"] == hashlib.sha256((out / bpe.RANKS_FILE).read_bytes()).hexdigest()


def test_the_gpt2_pattern_is_the_one_gpt2_splits_with(corpus):
    enc, manifest = bpe.train(str(corpus / "train.txt"), 300, pattern="gpt2", progress=False)
    assert manifest["pattern"] == get_encoding()._pat_str
    assert enc.decode(enc.encode_ordinary(SAMPLES[4])) == SAMPLES[4]


def test_train_and_eval_on_the_command_line_give_bytes_per_token_as_computed_directly(corpus, capsys):
    out = corpus / "cli-tok"
    assert main(["tokenizer", "train", str(corpus / "train.txt"), "--vocab-size", "300", "--out", str(out),
                 "--pattern", "gpt2", "--max-chars", "20000"]) == 0
    assert json.loads((out / bpe.MANIFEST).read_text())["chars"] == 20000
    capsys.readouterr()
    held = corpus / "heldout.txt"
    assert main(["tokenizer", "eval", str(out), "--data", str(held), "--json"]) == 0
    rows = {r["tokenizer"]: r for r in json.loads(capsys.readouterr().out)}
    text = held.read_text(encoding="utf-8")
    for name, enc in (("gpt2", get_encoding()), (str(out), bpe.load(out))):
        assert rows[name]["bytes_per_token"] == len(text.encode()) / len(enc.encode_ordinary(text))
    assert main(["tokenizer", "eval", str(out), "--data", str(held)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table] == ["tokenizer", "gpt2", str(out)]


def damage(out, how: str) -> None:
    if how == "no ranks":
        (out / bpe.RANKS_FILE).unlink()
    elif how == "no manifest":
        (out / bpe.MANIFEST).unlink()
    elif how == "edited ranks":
        data = (out / bpe.RANKS_FILE).read_bytes()
        (out / bpe.RANKS_FILE).write_bytes(data.replace(b" 256\n", b" 257\n", 1))
    elif how == "manifest without hash":
        manifest = json.loads((out / bpe.MANIFEST).read_text())
        del manifest["ranks_sha256"]
        (out / bpe.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("how,expected", [("no ranks", "incomplete, no ranks.tiktoken"),
                                          ("no manifest", "incomplete, no manifest.json"),
                                          ("edited ranks", "differs from the manifest's"),
                                          ("manifest without hash", "incomplete; expected the fields")])
def test_an_incomplete_or_altered_tokenizer_directory_is_one_line(trained, tmp_path, capsys, how, expected):
    out = tmp_path / "tok"
    bpe.save(*trained[:2], out)
    damage(out, how)
    assert main(["tokenizer", "eval", str(out), "--data", str(trained[2].parent / "heldout.txt"),
                 "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and expected in captured.err


@pytest.mark.parametrize("corpus_text,vocab,expected", [
    ("", "300", "no text to learn from"),
    ("abc", "260", "--vocab-size 260: expected 261"),
    ("abc", "65537", "--vocab-size 65537: expected 261 (256 bytes + 5 special tokens) to 65,536"),
    ("ab ab ab", "400", "give more text or a smaller --vocab-size"),
])
def test_bad_training_input_is_one_line_and_writes_nothing(tmp_path, capsys, corpus_text, vocab, expected):
    (tmp_path / "c.txt").write_text(corpus_text)
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(tmp_path / "c.txt"), "--vocab-size", vocab, "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_training_over_a_directory_of_other_files_is_refused(corpus, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["tokenizer", "train", str(corpus / "train.txt"), "--vocab-size", "300", "--out",
                 str(tmp_path)]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_eval_on_an_empty_corpus_is_one_line(trained, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text(" \n")
    assert main(["tokenizer", "eval", str(trained[2]), "--data", str(tmp_path / "empty.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no text" in err[0]
