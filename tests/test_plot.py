"""plot: training seconds as the x axis."""

import json

from gptscratch.plot import elapsed_seconds, plot_runs


def test_elapsed_seconds_sums_step_times_and_fills_unlogged_steps():
    rows = [{"step": 0, "val_loss": 5.0}, {"step": 0, "loss": 5, "dt_ms": 1000}, {"step": 1, "loss": 4, "dt_ms": 500},
            {"step": 4, "loss": 3, "dt_ms": 250}, {"step": 4, "val_loss": 3.5}]
    # step 0 starts at 0 s; step 1 after 1 s; steps 1-3 take 0.5 s each (step 1's time); step 4 itself 0.25 s
    assert elapsed_seconds(rows) == {0: 0.0, 1: 1.0, 4: 2.5, 5: 2.75}


def test_plot_in_seconds_writes_a_png(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 5 - s / 10, "dt_ms": 100} for s in range(10)] + [{"step": 5, "val_loss": 4.6}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = plot_runs([run], tmp_path / "p.png", x="seconds")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
