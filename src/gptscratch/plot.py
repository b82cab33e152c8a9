"""`gptscratch plot RUN_DIR ...`: train/val loss and HellaSwag curves from metrics.jsonl, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from gptscratch.errors import UserError
from gptscratch.io import atomic_path

# OpenAI's GPT-2 124M on FineWeb-Edu, as build-nanogpt measured it (play.ipynb, hellaswag.py).
GPT2_124M_FINEWEB_EDU_VAL_LOSS = 3.2924
GPT2_124M_HELLASWAG_ACC_NORM = 0.2955
# CORE of OpenAI's GPT-2 124M, as nanochat measured it (dev/estimate_gpt3_core.ipynb).
GPT2_124M_CORE = 0.1139


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"{path}: not found; is {run_dir} a training run directory?")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}:{n}: not a JSON object") from None
    return rows


def _is_fineweb_edu(run_dir: Path) -> bool:
    try:
        data = json.loads((Path(run_dir) / "config.json").read_text()).get("data", "")
    except (OSError, json.JSONDecodeError):
        return False
    manifest = Path(data) / "manifest.json"
    source = ""
    if manifest.exists():
        try:
            source = str(json.loads(manifest.read_text()).get("source", ""))
        except json.JSONDecodeError:
            pass
    return "fineweb" in (data + source).lower() and "edu" in (data + source).lower()


def elapsed_seconds(rows: list[dict]) -> dict[int, float]:
    """Training seconds spent before each step (the sum of the logged step times; evaluation excluded).

    A step not logged (log_interval > 1) is taken to last as long as the last logged one before it.
    """
    timed = sorted((r["step"], r["dt_ms"] / 1000) for r in rows if "dt_ms" in r)
    out: dict[int, float] = {}
    t, prev_step, prev_dt = 0.0, 0, 0.0
    for step, dt in timed:
        t += (step - prev_step) * prev_dt
        out[step] = t
        prev_step, prev_dt = step, dt
    out[prev_step + 1] = t + prev_dt
    return out


def _at_seconds(points: list[tuple[int, float]], elapsed: dict[int, float]) -> list[tuple[float, float]]:
    steps = sorted(elapsed)
    out = []
    for step, value in points:
        known = max((s for s in steps if s <= step), default=None)
        if known is not None:
            out.append((elapsed[known], value))
    return out


def _finish_panel(ax, title: str, ylabel: str, xlabel: str = "step") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)


def plot_runs(run_dirs: list[Path], out: Path, x: str = "step") -> Path:
    """One PNG of every run's curves; x is "step" or "seconds" (training time, see `elapsed_seconds`)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    runs = [(Path(r), read_metrics(Path(r))) for r in run_dirs]
    has_hs = any("hellaswag_acc_norm" in row for _, rows in runs for row in rows)
    has_core = any("core" in row for _, rows in runs for row in rows)
    panels = 1 + has_hs + has_core
    fig, axes = plt.subplots(1, panels, figsize=(7 + 5 * (panels - 1), 4.5), squeeze=False)
    ax = axes[0][0]
    for run_dir, rows in runs:
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if x == "seconds":
            elapsed = elapsed_seconds(rows)
            train, val = _at_seconds(train, elapsed), _at_seconds(val, elapsed)
        if train:
            line, = ax.plot(*zip(*train, strict=True), alpha=0.6, label=f"{run_dir.name} train")
            if val:
                ax.plot(*zip(*val, strict=True), "o-", color=line.get_color(), label=f"{run_dir.name} val")
    if any(_is_fineweb_edu(r) for r, _ in runs):
        ax.axhline(GPT2_124M_FINEWEB_EDU_VAL_LOSS, color="red", ls="--", label="OpenAI GPT-2 124M val")
    _finish_panel(ax, "loss", "loss", "training seconds" if x == "seconds" else "step")
    if has_hs:
        ax = axes[0][1]
        for run_dir, rows in runs:
            hs = [(r["step"], r["hellaswag_acc_norm"]) for r in rows if "hellaswag_acc_norm" in r]
            if hs:
                ax.plot(*zip(*hs, strict=True), "o-", label=run_dir.name)
        ax.axhline(GPT2_124M_HELLASWAG_ACC_NORM, color="red", ls="--", label="OpenAI GPT-2 124M")
        _finish_panel(ax, "HellaSwag", "acc_norm")
    if has_core:
        ax = axes[0][-1]
        for run_dir, rows in runs:
            points = [(r["step"], r["core"]) for r in rows if "core" in r]
            if points:
                ax.plot(*zip(*points, strict=True), "o-", label=run_dir.name)
        ax.axhline(GPT2_124M_CORE, color="red", ls="--", label="OpenAI GPT-2 124M")
        _finish_panel(ax, "CORE", "centered accuracy, mean of the tasks")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")  # the format: the temporary name does not end in .png
    plt.close(fig)
    return out


def cmd_plot(args) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'gptscratch[plot]'") from None
    out = Path(args.out) if args.out else Path(args.runs[0]) / "loss.png"
    plot_runs([Path(r) for r in args.runs], out, x=args.x)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot loss, HellaSwag and CORE curves of one or more runs",
                       description="Draw train/val loss (and HellaSwag, CORE) from each run's metrics.jsonl into one "
                       "PNG.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png of the first run)")
    p.add_argument("--x", choices=("step", "seconds"), default="step",
                   help="x axis: optimizer steps, or training seconds (step times summed, evaluation excluded)")
    p.set_defaults(func=cmd_plot)
