"""The GPT-2 recipe against the modern one, and the ablation between them, on your own data.

    python benchmarks/recipes.py numpy-corpus --out data/numpy-src   # the second corpus: Python source
    python benchmarks/recipes.py ablation --data data/shakespeare --seeds 1337
    python benchmarks/recipes.py compare --data data/shakespeare,data/numpy-src --seeds 1337,1,2

`ablation` trains the GPT-2 recipe (`--base demo`) and then adds one change at a time, cumulatively
(rope, qk-norm, rmsnorm, relu2, untied, zero-init, muon, wsd, softcap; and swiglu in place of relu2 at
the end, the set that exports to transformers' Qwen3). `compare` trains the two named recipes
(`--base` and `--modern`, presets) per corpus and seed. Every run is `gptscratch train` with the same
shape, batch, steps and batch order; only the listed settings change.

For each run: the final model's val loss over every val window (benchmarks/val_scorer.py), the median
s/step, and the training seconds (step times summed, evaluation excluded) at which its val curve (the
trainer's own estimate every `--eval-interval` steps, on a fixed val set, linearly interpolated) first
reaches the GPT-2 recipe's final value on the same corpus (mean over seeds). The ratio of those seconds
to the GPT-2 recipe's full training time is the headline (target <= 0.6). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from val_scorer import score_run, split_tokens

from gptscratch.config import resolve_config
from gptscratch.plot import elapsed_seconds, read_metrics

# each step adds its settings to everything before it
ABLATION: list[tuple[str, list[str]]] = [
    ("gpt2", []),
    ("+rope", ["--pos-embedding", "rope"]),
    ("+qk-norm", ["--qk-norm", "true"]),
    ("+rmsnorm", ["--norm", "rmsnorm", "--norm-weight", "false", "--bias", "false"]),
    ("+relu2", ["--mlp", "relu2"]),
    ("+untied", ["--tie-embeddings", "false"]),
    ("+zero-init", ["--zero-init-proj", "true"]),
    ("+muon", ["--optimizer", "muon"]),
    ("+wsd", ["--schedule", "wsd"]),
    ("+softcap", ["--logit-softcap", "15"]),
]
VARIANTS: list[tuple[str, list[str]]] = [("swiglu-for-relu2", ["--mlp", "swiglu"])]  # on top of the full chain


def numpy_corpus(out: Path) -> None:
    """numpy's own Python source (from its PyPI wheel, installed with torch), tests excluded, as a corpus:
    a different kind of text from Shakespeare (code: indentation, identifiers, docstrings), about as large."""
    import shutil
    import tempfile

    import numpy

    from gptscratch.data.prepare import prepare

    root = Path(numpy.__file__).parent
    files = sorted(p for p in root.rglob("*.py") if "tests" not in p.parts)
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:  # prepare reads .txt files, one document each
            shutil.copyfile(f, Path(tmp) / ("_".join(f.relative_to(root).parts) + ".txt"))
        prepare(tmp, out, seed=0, progress=False)
    print(f"numpy {numpy.__version__}: {len(files)} files -> {out}")


def train_run(data: Path, out: Path, preset: str, seed: int, settings: list[str], eval_interval: int) -> dict:
    cmd = [sys.executable, "-m", "gptscratch", "train", "--preset", preset, "--data", str(data), "--out", str(out),
           "--seed", str(seed), "--device", "cpu", "--eval-interval", str(eval_interval), *settings]
    steps = resolve_config(preset).max_steps
    if not (out / "checkpoints" / f"step_{steps:06d}").exists():  # a finished run is reused
        # a run killed part way continues from its last checkpoint; one killed before any starts again
        cmd.append("--resume" if (out / "checkpoints").exists() else "--overwrite")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    rows = read_metrics(out)
    elapsed = elapsed_seconds(rows)
    curve = [(elapsed[r["step"]], r["val_loss"]) for r in rows if "val_loss" in r and r["step"] in elapsed]
    steps = [r["dt_ms"] / 1000 for r in rows if "dt_ms" in r]
    return {"run": str(out), "seed": seed, "settings": settings, "curve": curve, "train_s": max(elapsed.values()),
            "s_per_step": statistics.median(steps[1:])}


def seconds_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first time the curve is at or below `target`, interpolated between its points; None if never."""
    if curve and curve[0][1] <= target:
        return curve[0][0]
    for (t0, v0), (t1, v1) in zip(curve, curve[1:], strict=False):
        if v1 <= target:  # and v0 > target, or we would have returned at the point before
            return t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return None


def summarise(name: str, runs: list[dict]) -> dict:
    losses = [r["val_loss"] for r in runs]
    return {"name": name, "runs": runs, "val_mean": statistics.mean(losses),
            "val_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "s_per_step": statistics.median(r["s_per_step"] for r in runs),
            "train_s": statistics.mean(r["train_s"] for r in runs)}


def add_reach(rows: list[dict], baseline: dict) -> None:
    """Seconds (mean over seeds) at which each recipe reaches the baseline's final curve value."""
    target = statistics.mean(r["curve"][-1][1] for r in baseline["runs"])
    for row in rows:
        reach = [seconds_to_reach(r["curve"], target) for r in row["runs"]]
        if row is baseline:  # by definition it gets there at its end (a seed above the mean would say never)
            reach = [r["train_s"] for r in row["runs"]]
        row["target"] = target
        row["reach_s"] = statistics.mean(reach) if all(t is not None for t in reach) else None
        row["reach_ratio"] = row["reach_s"] / baseline["train_s"] if row["reach_s"] is not None else None


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n| recipe | val loss (all windows) | s/step | reaches GPT-2's final val at | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        reach = f"{r['reach_s']:.0f} s" if r.get("reach_s") is not None else "never"
        ratio = f"{r['reach_ratio']:.2f}x" if r.get("reach_ratio") is not None else "-"
        print(f"| {r['name']} | {r['val_mean']:.3f} ± {r['val_std']:.3f} | {r['s_per_step']:.3f} | {reach} | {ratio} |",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("ablation", "compare", "numpy-corpus"))
    p.add_argument("--data", default="data/shakespeare", help="prepared corpora, comma-separated")
    p.add_argument("--seeds", default="1337")
    p.add_argument("--base", default="demo", help="the GPT-2 recipe's preset")
    p.add_argument("--modern", default="modern-demo", help="compare: the modern recipe's preset")
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--only", default="", help="ablation: run only these step names (comma-separated)")
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    args = p.parse_args(argv)
    if args.mode == "numpy-corpus":
        numpy_corpus(args.out)
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    result: dict = {"mode": args.mode, "corpora": {}}
    for data in (Path(d) for d in args.data.split(",")):
        seq_len = resolve_config(args.base).seq_len
        val = split_tokens(data, "val")
        if args.mode == "ablation":
            chain, settings = [], []
            for name, extra in ABLATION:
                settings = settings + extra
                chain.append((name, args.base, list(settings)))
            chain += [(name, args.base, settings + extra) for name, extra in VARIANTS]
        else:
            chain = [("gpt2 (" + args.base + ")", args.base, []), ("modern (" + args.modern + ")", args.modern, [])]
        rows = []
        for name, preset, settings in chain:
            if args.only and name not in args.only.split(",") and name != chain[0][0]:
                continue
            runs = []
            for seed in seeds:
                slug = name.strip("+").split(" ")[0]
                run = train_run(data, args.out / data.name / f"{slug}-{seed}", preset, seed, settings,
                                args.eval_interval)
                run["val_loss"] = score_run(Path(run["run"]), val, seq_len)
                runs.append(run)
            rows.append(summarise(name, runs))
            add_reach(rows, rows[0])
            print_table(f"{args.mode} on {data} ({len(seeds)} seed(s))", rows[-1:])
        add_reach(rows, rows[0])
        print_table(f"{args.mode} on {data}: all ({len(seeds)} seed(s))", rows)
        result["corpora"][str(data)] = rows
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
