"""`tokenizer-bpb`: the corpus back as text with val's documents exactly, the same val text for every tokenizer,
bytes/token of tokenizers trained on train only, and the report from run records alone.
"""

import contextlib
import io
import json
import random
import statistics

import pytest

from benchmarks import tokenizer_bpb
from benchmarks.__main__ import main
from benchmarks.tokenizer_bpb import (
    check_val,
    compare,
    extract_text,
    prepare_arm,
    prepare_command,
    read_jsonl,
    report,
    schedule,
    utf8_boundary,
)
from gptscratch.data.prepare import prepare
from gptscratch.tokenizer import get_encoding

WORDS = "the a of to and in is it that river candle violin garden rocket naïve café façade — 🤗 ünïcödé".split()


def make_docs(n: int = 40, words: int = 150, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = [f"Document {i}.\n" + " ".join(rng.choice(WORDS) for _ in range(words)) + "\n" for i in range(n)]
    docs[5] = "   \n"  # whitespace only: prepare gives it no tokens, and the text leaves it out
    return docs


def cut_inside_a_character(doc: str) -> int:
    """A count of `doc`'s tokens whose bytes end part way through a character (GPT-2 splits 🤗 across tokens)."""
    enc = get_encoding()
    ids = enc.encode_ordinary(doc)
    return next(i for i in range(1, len(ids)) if utf8_boundary(enc.decode_bytes(ids[:i])) < len(
        enc.decode_bytes(ids[:i])))


@pytest.fixture
def in_process(monkeypatch):
    """The benchmark's gptscratch commands, run in this process: the same commands, without an interpreter and
    torch to start for each (the benchmark itself runs each in a process of its own)."""
    from gptscratch.cli import main as gptscratch

    def run(args: list[str]) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert gptscratch(args) == 0, args
        return out.getvalue()

    monkeypatch.setattr(tokenizer_bpb, "RUNNER", run)


@pytest.fixture
def gpt2_data(tmp_path):
    """A GPT-2 data directory whose val/train cut falls inside a character of document 3, and its documents."""
    docs = make_docs()
    src = tmp_path / "src"
    src.mkdir()
    for i, d in enumerate(docs):
        (src / f"{i:03d}.txt").write_text(d, encoding="utf-8")
    enc = get_encoding()
    before = sum(len(enc.encode_ordinary(d)) + 1 for d in docs[:3])
    data = tmp_path / "data" / "tiny"
    prepare(str(src), data, val_tokens=before + 1 + cut_inside_a_character(docs[3]), workers=1, progress=False)
    return data, docs


def test_text_gives_back_val_and_train_as_documents_with_the_cut_document_cut_at_a_whole_character(gpt2_data,
                                                                                                       tmp_path):
    data, docs = gpt2_data
    work = tmp_path / "work"
    info = extract_text(data, work)
    val, train = read_jsonl(work / "val.jsonl"), read_jsonl(work / "train.jsonl")
    assert val[:3] == docs[:3] and val[3] and docs[3].startswith(val[3]) and val[3] != docs[3]
    assert train[0] == docs[3][len(val[3]):]  # the rest of the cut document opens train
    kept = [d for d in docs if d.strip()]
    assert train[1:] == kept[4:] and "".join(val + train) == "".join(kept)
    assert read_jsonl(work / "all.jsonl") == val + train
    assert info["straddler_cut"] and info["val_documents"] == 4 and info["train_documents"] == len(kept) - 3
    assert info["val_bytes"] == sum(len(d.encode()) for d in val)
    (work / "val.jsonl").write_text("")  # a second call with the same shards reuses text.json and its files
    assert extract_text(data, work) == info and (work / "val.jsonl").read_text() == ""


def test_text_refuses_what_is_not_gpt2_text(tmp_path):
    from gptscratch.errors import UserError

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({"chat": {}, "tokenizer": {"name": "gpt2-chat"},
                                                              "shards": []}))
    with pytest.raises(UserError, match="GPT-2's tokenizer"):
        extract_text(tmp_path / "d", tmp_path / "w")


def test_each_tokenizer_prepares_val_as_exactly_the_val_documents(gpt2_data, tmp_path):
    data, _ = gpt2_data
    work = tmp_path / "work"
    extract_text(data, work)
    arm = prepare_arm(work, "gpt2", None)
    val = read_jsonl(work / "val.jsonl")
    enc = get_encoding()
    assert arm["val_tokens"] == sum(len(enc.encode_ordinary(d)) + 1 for d in val)
    assert arm["val_bytes_per_token"] == pytest.approx(arm["val_bytes"] / (arm["val_tokens"] - len(val)))
    with pytest.raises(SystemExit, match="does not decode to the val documents"):
        check_val(work / "data-gpt2", enc, val[:-1] + [val[-1] + "x"], arm["val_tokens"])
    with pytest.raises(SystemExit, match="not the"):
        check_val(work / "data-gpt2", enc, val, arm["val_tokens"] + 1)
    # a trained tokenizer's arm is the same prepare with its --tokenizer
    cmd = prepare_command(work, work / "data-bpe300", 123, work / "bpe300")
    assert cmd[:6] == ["prepare", str(work / "all.jsonl"), "--out", str(work / "data-bpe300"), "--val-tokens", "123"]
    assert cmd[-2:] == ["--tokenizer", str(work / "bpe300")]


def test_bytes_trains_on_train_only_and_weighs_on_val(gpt2_data, tmp_path, capsys, in_process):
    data, _ = gpt2_data
    out = tmp_path / "runs"
    assert main(["tokenizer-bpb", "bytes", "--data", str(data), "--out", str(out), "--vocab-sizes", "270,300",
                 "--json", str(tmp_path / "bytes.json")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "bytes.json").read_text()) == result
    rows = result["corpora"]["tiny"]["rows"]
    assert [r["tokenizer"] for r in rows] == ["gpt2", "bpe270", "bpe300"]
    val_bytes = result["corpora"]["tiny"]["text"]["val_bytes"]
    assert all(r["bytes"] == val_bytes for r in rows)  # every tokenizer on the same val text
    assert rows[1]["bytes_per_token"] < rows[2]["bytes_per_token"]  # more merges, fewer tokens
    manifest = json.loads((out / "tiny" / "bpe300" / "manifest.json").read_text())
    assert manifest["source"]["spec"] == str(out / "tiny" / "train.jsonl")  # never val


def test_schedule_gives_the_budgets_steps_and_the_presets_warmup_fraction():
    assert schedule("modern-demo", 120, 0.4) == (300, 30)  # the preset's own 300 steps and 30 warmup
    assert schedule("modern-demo", 120, 0.1) == (1200, 120)


def test_compare_trains_for_the_budget_and_records_val_bpb(gpt2_data, tmp_path, in_process):
    # GPT-2's arm only (a trained tokenizer's needs prepare --tokenizer); the tiny preset, one seed
    data, _ = gpt2_data
    work = tmp_path / "work"
    extract_text(data, work)
    records = compare(work, "tiny", [], "tiny", [3], budget=0.2, calib_steps=6, calib_repeats=1, eval_interval=0)
    (rec,) = records
    assert rec["tokenizer"] == "gpt2" and rec["seed"] == 3 and rec["vocab_size"] == 50257
    assert rec["steps"] == rec["settings"]["max_steps"] == schedule("tiny", 0.2, rec["s_per_step_calibrated"])[0]
    assert 0 < rec["val_bpb"] < 20 and rec["eval"]["split"] == "val" and rec["train_s"] > 0
    assert 0.85 < rec["scored_bytes_fraction"] < 1  # bpb over (nearly) all of the val text
    assert json.loads((work / "runs" / "gpt2-3" / "record.json").read_text()) == rec
    # run again: the same calibration, so the same --max-steps, and the finished run is reused as it is
    assert compare(work, "tiny", [], "tiny", [3], 0.2, 6, 1, 0) == [rec]


def record(corpus, tokenizer, vocab, seed, bpb, loss=4.0):
    return {"corpus": corpus, "tokenizer": tokenizer, "vocab_size": vocab, "seed": seed, "val_bpb": bpb,
            "val_loss": loss, "steps": 300 if tokenizer == "gpt2" else 500, "tokens_per_s": 1000.0, "train_s": 120.0,
            "wall_s": 150.0, "budget_s": 120.0, "val_bytes_per_token": 3.2}


def test_report_reads_only_the_records_and_sets_each_tokenizer_against_gpt2(tmp_path, capsys):
    gpt2, bpe = [2.0, 2.1, 2.2], [1.8, 1.85, 1.9]
    recs = [record("code", "bpe4096", 4096, s, b) for s, b in zip((1337, 1, 2), bpe, strict=True)]
    recs += [record("code", "gpt2", 50257, s, b) for s, b in zip((1337, 1, 2), gpt2, strict=True)]
    recs += [record("shakespeare", "gpt2", 50257, 1337, 2.5)]
    for r in recs:
        path = tmp_path / r["corpus"] / "runs" / f"{r['tokenizer']}-{r['seed']}" / "record.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))
    assert main(["tokenizer-bpb", "report", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])["corpora"]
    assert result == json.loads(json.dumps(report(recs)))  # from the files, as from the records
    base, mine = result["code"]
    assert base["tokenizer"] == "gpt2" and base["seeds"] == [1, 2, 1337]  # GPT-2's row first
    assert mine["val_bpb"] == pytest.approx(1.85) and mine["val_bpb_sd"] == pytest.approx(statistics.stdev(bpe))
    assert mine["bpb_vs_gpt2"] == pytest.approx(-0.25)
    se = (statistics.variance(bpe) / 3 + statistics.variance(gpt2) / 3) ** 0.5
    assert mine["welch_t"] == pytest.approx(-0.25 / se) and base["welch_t"] is None
    assert result["shakespeare"][0]["val_bpb_sd"] == 0.0 and "| bpe4096 | 4,096 | 3.200 | 3 | 1.8500" in out
    assert main(["tokenizer-bpb", "report", "--out", str(tmp_path / "none")]) == 2  # no records: one line
