"""The quality-comparison scripts' arithmetic: the one val scorer and the seconds-to-target reading.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.recipes import seconds_to_reach
from benchmarks.val_scorer import score


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
    assert r["generate_tok_s"] > 0 and r["engine_vs_generate"] == pytest.approx(r["sequential_tok_s"] /
                                                                              r["generate_tok_s"])


def test_timing_alternates_todays_code_with_an_older_tree_and_refuses_a_tree_not_imported(tmp_path, monkeypatch,
                                                                                            capsys):
    from benchmarks.recipes import timing

    monkeypatch.chdir(tmp_path)  # the runs' default corpus is written under the working directory
    src = Path(__file__).resolve().parents[2] / "src"
    result = timing(["tiny:--mlp=relu2"], steps=7, repeats=1, out=tmp_path / "t", before=src)
    assert set(result) == {"tiny:--mlp=relu2", "tiny:--mlp=relu2@before"}  # a preset with settings: its own row
    assert all(v > 0 for v in result.values())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    not_a_package = tmp_path / "empty"
    not_a_package.mkdir()
    with pytest.raises(SystemExit, match="--before .*imports gptscratch from"):
        timing(["tiny"], steps=7, repeats=1, out=tmp_path / "t", before=not_a_package)


def test_report_counts_a_run_shared_by_two_logs_once_and_reads_steps_to_the_target(tmp_path, capsys):
    from benchmarks.recipes import report

    def run(name: str, seed: int, val: list[tuple[int, float]], score: float) -> dict:
        d = tmp_path / f"{name}-{seed}"
        d.mkdir()
        lines = [{"step": s, "loss": 1.0} for s in range(100)] + [{"step": s, "val_loss": v} for s, v in val]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return {"run": str(d), "seed": seed, "val_loss": score}

    gpt2 = [run("gpt2", s, [(0, 10.0), (50, 6.0), (100, 5.0 + s)], 5.0 + s) for s in (0, 1)]  # target: 5.5
    modern = run("modern", 0, [(0, 10.0), (50, 5.0), (100, 4.0)], 4.0)  # 5.5 at step 45 (between 0 and 50)
    logs = []
    for i, rows in enumerate([[("gpt2", gpt2), ("+rope", [modern])], [("gpt2 (demo)", gpt2)]]):
        log = tmp_path / f"log{i}"
        log.write_text(json.dumps({"corpora": {"c": [{"name": n, "runs": r} for n, r in rows]}}) + "\n")
        logs.append(log)
    out = report(logs, {"gpt2": 1.0, "+rope": 2.0}, None, {})["c"]
    assert out["target"] == pytest.approx(5.5)
    base, rope = out["rows"]
    assert base["seeds"] == [0, 1] and base["val_mean"] == pytest.approx(5.5)
    assert rope["reach_steps"] == pytest.approx(45) and rope["step_ratio"] == pytest.approx(0.45)
    assert rope["wall_ratio"] == pytest.approx(0.9)  # twice the s/step
