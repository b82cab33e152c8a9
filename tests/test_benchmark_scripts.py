"""The quality-comparison scripts' arithmetic: the one val scorer and the seconds-to-target reading."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from recipes import seconds_to_reach  # noqa: E402
from val_scorer import score  # noqa: E402


def test_score_reads_every_window_once():
    val = np.arange(10 * 8 + 3)  # 10 full windows of 8 (+1 for y), 2 tokens of tail
    loss, windows = score(lambda x, y: torch.zeros(*x.shape, 200), val, seq_len=8, batch=3)
    assert windows == 10 and loss == pytest.approx(math.log(200))  # uniform logits: ln V per token
    torch.manual_seed(0)
    table = torch.randn(200, 200)  # a bigram model: logits depend on the current token only
    got, _ = score(lambda x, y: table[x], val, seq_len=8, batch=4)
    rows = torch.from_numpy(val[:81].astype(np.int64))
    want = F.cross_entropy(table[rows[:-1]], rows[1:])  # the stream in one piece: the same 80 predictions
    assert got == pytest.approx(want.item(), rel=1e-6)


def test_seconds_to_reach_interpolates_the_first_crossing():
    curve = [(0.0, 10.0), (10.0, 6.0), (20.0, 5.0), (30.0, 4.5), (40.0, 4.8)]
    assert seconds_to_reach(curve, 5.5) == pytest.approx(15.0)
    assert seconds_to_reach(curve, 5.0) == pytest.approx(20.0)
    assert seconds_to_reach(curve, 4.5) == pytest.approx(30.0)
    assert seconds_to_reach(curve, 4.0) is None
    assert seconds_to_reach(curve, 11.0) == 0.0


def test_serve_bench_runs_both_modes_on_the_same_requests(tmp_path):
    import argparse

    from benchmarks.serve_bench import run

    out = tmp_path / "serve.json"
    result = run(argparse.Namespace(shape="tiny", clients=2, max_tokens=3, rounds=1, out=str(out)))
    r = result["rounds"][0]
    assert r["tokens"] == 2 * 3 and r["batched_tok_s"] > 0 and r["sequential_tok_s"] > 0
    assert json.loads(out.read_text())["median"]["ratio"] == r["ratio"]


def test_timing_alternates_todays_code_with_an_older_tree_and_refuses_a_tree_not_imported(tmp_path, monkeypatch,
                                                                                            capsys):
    from recipes import timing

    monkeypatch.chdir(tmp_path)  # the runs' default corpus is written under the working directory
    src = Path(__file__).resolve().parent.parent / "src"
    result = timing(["tiny:--mlp=relu2"], steps=7, repeats=1, out=tmp_path / "t", before=src)
    assert set(result) == {"tiny:--mlp=relu2", "tiny:--mlp=relu2@before"}  # a preset with settings: its own row
    assert all(v > 0 for v in result.values())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    not_a_package = tmp_path / "empty"
    not_a_package.mkdir()
    with pytest.raises(SystemExit, match="--before .*imports gptscratch from"):
        timing(["tiny"], steps=7, repeats=1, out=tmp_path / "t", before=not_a_package)
