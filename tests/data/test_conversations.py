"""data/conversations.py: `prepare --chat` from jsonl, parquet and a hub dataset, against `encode_conversation`;
bad conversations in one line or skipped and counted.
"""

import json

import numpy as np
import pytest

from gptscratch.chat import CHAT_VOCAB_SIZE, encode_conversation
from gptscratch.cli import main
from gptscratch.data import conversations
from gptscratch.data.prepare import prepare
from gptscratch.data.shards import is_chat_data
from tests.helpers import assistant, read_stream, rule_conversations, user, varied_conversations, write_jsonl

# The rule: a fixed, arbitrary answer per noun, asked three ways. Nothing in a noun says its answer.
BAD_ROWS = [
    ("not json at all", "not valid JSON"),
    (json.dumps({"text": "hi"}), "no field 'messages' (fields: text)"),
    (json.dumps({"messages": [user("a"), {"role": "bot", "content": "b"}]}), "messages[1]: role 'bot'"),
    (json.dumps({"messages": [user(""), assistant("b")]}), "messages[0]: the user's content is empty"),
    (json.dumps({"messages": [user("a"), user("b")]}), "messages[1] is the user's turn where the assistant's"),
]


def test_prepare_chat_writes_each_conversations_ids_in_order_with_a_chat_manifest(tmp_path, capsys):
    convs = varied_conversations(40)
    src = write_jsonl(tmp_path / "c.jsonl", convs)
    assert main(["prepare", str(src), "--chat", "--out", str(tmp_path / "d"), "--shard-tokens", "300",
                 "--val-tokens", "200", "--workers", "2", "--quiet"]) == 0
    assert "40 conversations (0 bad rows skipped)" in capsys.readouterr().out
    want = np.concatenate([encode_conversation(m)[0] for m in convs])
    assert (read_stream(tmp_path / "d") == want).all()
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert len(manifest["shards"]) > 2 and manifest["documents"] == 40
    assert manifest["tokenizer"]["vocab_size"] == CHAT_VOCAB_SIZE == 50261
    assert (manifest["chat"]["conversations"], manifest["chat"]["skipped"]) == (40, 0)
    assert is_chat_data(tmp_path / "d") and manifest["settings"]["chat"] is True
    # one worker or two, the same bytes; a rerun finds the finished corpus
    again = prepare(str(src), tmp_path / "e", chat=True, shard_tokens=300, val_tokens=200, workers=1, progress=False)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]


def test_parquet_and_a_hub_dataset_give_the_jsonl_corpus(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    convs = varied_conversations(12)
    ref = prepare(str(write_jsonl(tmp_path / "c.jsonl", convs)), tmp_path / "ref", chat=True, val_tokens=50,
                  workers=1, progress=False)
    ds = datasets.Dataset.from_list([{"messages": m, "source": "test"} for m in convs])
    ds.to_parquet(str(tmp_path / "c.parquet"))
    got = prepare(str(tmp_path / "c.parquet"), tmp_path / "pq", chat=True, val_tokens=50, workers=1, progress=False)
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in ref["shards"]]
    # the hub path: datasets.load_dataset's answer stood in for by a dataset saved and loaded from disk
    ds.save_to_disk(str(tmp_path / "hub"))
    asked = []

    def load(path, name, streaming, where, **kw):
        asked.append(path)
        return datasets.load_from_disk(str(tmp_path / "hub"))

    monkeypatch.setattr(conversations, "load_hf_dataset", load)
    hub = prepare("hf:someone/talks", tmp_path / "hub-out", chat=True, val_tokens=50, workers=1, progress=False)
    assert asked == ["someone/talks"] and hub["name"] == "talks"
    assert [s["sha256"] for s in hub["shards"]] == [s["sha256"] for s in ref["shards"]]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_a_bad_conversation_stops_prepare_in_one_line_naming_file_and_line(tmp_path, capsys, row, message):
    good = json.dumps({"messages": [user("q"), assistant("a")]})
    src = write_jsonl(tmp_path / "c.jsonl", [good, "", good, row, good])
    assert main(["prepare", str(src), "--chat", "--out", str(tmp_path / "d"), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{src}:4: {message}" in err and "--skip-bad" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_skip_bad_leaves_out_bad_rows_and_counts_them(tmp_path, capsys):
    good = [[user(f"q{i}"), assistant(f"a{i}")] for i in range(4)]
    rows = [good[0], BAD_ROWS[0][0], good[1], *[r for r, _ in BAD_ROWS[1:]], good[2], good[3]]
    src = write_jsonl(tmp_path / "c.jsonl", rows)
    assert main(["prepare", str(src), "--chat", "--skip-bad", "--out", str(tmp_path / "d"), "--quiet",
                 "--val-tokens", "5", "--workers", "2"]) == 0
    assert "4 conversations (5 bad rows skipped)" in capsys.readouterr().out
    assert (read_stream(tmp_path / "d") == np.concatenate([encode_conversation(m)[0] for m in good])).all()
    # a parquet row names its row; nothing but bad rows is an error too
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([{"messages": m} for m in [good[0], [user("x"), user("y")]]]).to_parquet(
        str(tmp_path / "c.parquet"))
    assert main(["prepare", str(tmp_path / "c.parquet"), "--chat", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert f"{tmp_path / 'c.parquet'} row 1: messages[1]" in capsys.readouterr().err
    write_jsonl(tmp_path / "bad.jsonl", [r for r, _ in BAD_ROWS])
    assert main(["prepare", str(tmp_path / "bad.jsonl"), "--chat", "--skip-bad", "--out", str(tmp_path / "b"),
                 "--quiet"]) == 2
    assert "no valid conversations (5 bad rows skipped)" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["c.jsonl", "--skip-bad"], "--skip-bad: only with --chat"),
    (["shakespeare", "--chat"], "--chat: shakespeare is a text corpus"),
    (["c.txt", "--chat"], "--chat reads conversations from .jsonl, .jsonl.gz, .parquet files, not .txt"),
])
def test_chat_options_out_of_place_are_refused_in_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "c.jsonl", rule_conversations(3))
    (tmp_path / "c.txt").write_text("text")
    assert main(["prepare", *argv, "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
