"""`bpe-trainers`: rustbpe and HF tokenizers on the same pieces of text, each in a process of its own."""

import json
import random

import pytest

from benchmarks.__main__ import main
from benchmarks.bpe_trainers import split_corpus, stdlib_files

pytest.importorskip("rustbpe")
pytest.importorskip("tokenizers")


def test_every_tenth_document_is_held_out_and_special_tokens_are_cut_out_of_both():
    docs = [f"doc {i} <|endoftext|>tail {i}" for i in range(20)]
    train, held = split_corpus(docs, ("<|endoftext|>", "<|user_start|>"))
    assert held == ["doc 9 ", "tail 9", "doc 19 ", "tail 19"]
    assert len(train) == 36 and not any("<|" in p for p in train + held)


def test_the_stdlib_corpus_leaves_out_tests_and_site_packages():
    files = stdlib_files()
    assert files and all("site-packages" not in f.parts and "test" not in f.parts for f in files)
    assert any(f.name == "argparse.py" for f in files)


def test_both_trainers_learn_the_same_vocabulary_size_and_are_measured_alike(tmp_path, capsys):
    rng = random.Random(0)
    words = "def return self value import class lambda for while numpy array index".split()
    corpus = tmp_path / "code.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(300))}) + "\n"
                              for _ in range(30)))
    out = tmp_path / "result.json"
    assert main(["bpe-trainers", "--corpus", str(corpus), "--vocab-sizes", "300", "--repeats", "1",
                 "--json", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result and result["documents"] == 30
    rustbpe, tokenizers = result["rows"]
    assert (rustbpe["trainer"], tokenizers["trainer"]) == ("rustbpe", "tokenizers")
    for row in result["rows"]:
        assert row["learned"] == 300 - 5 and row["seconds"] > 0 and row["peak_mib"] >= 0
        assert row["peak_total_mib"] > row["peak_mib"]  # the interpreter holding the text comes on top
    # the same pieces, pattern and number of merges: the same compression (ties may be broken differently)
    assert rustbpe["bytes_per_token"] == pytest.approx(tokenizers["bytes_per_token"], rel=0.02)
    assert rustbpe["shared_vocab"] > 0.9
