"""The GPT-2 recipe against the modern one, and the ablation between them, on your own data.

    python -m benchmarks recipes numpy-corpus --out data/numpy-src   # the second corpus: Python source
    python -m benchmarks recipes ablation --data data/shakespeare --seeds 1337
    python -m benchmarks recipes compare --data data/shakespeare,data/numpy-src --seeds 1337,1,2

`ablation` trains the GPT-2 recipe (`--base demo`) and then adds one change at a time, cumulatively
(rope, qk-norm, rmsnorm, relu2, untied, zero-init, muon, wsd, softcap; and swiglu in place of relu2 at
the end, the set that exports to transformers' Qwen3). `compare` trains the two named recipes
(`--base` and `--modern`, presets) per corpus and seed. Every run is `gptscratch train` with the same
shape, batch, steps and batch order; only the listed settings change.

For each run: the final model's val loss over every val window (benchmarks/val_scorer.py), the median
s/step, and the training seconds (step times summed, evaluation excluded) at which its val curve (the
trainer's own estimate every `--eval-interval` steps, on the same val rows each time, drawn from the whole
split; linearly interpolated) first reaches the GPT-2 recipe's final value on the same corpus (mean over
seeds). The ratio of those seconds to the GPT-2 recipe's full training time is the headline (target <= 0.6).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.val_scorer import score_run, split_tokens
from gptscratch.plot import elapsed_seconds, read_metrics
from gptscratch.train.config import resolve_config

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
# on top of the full chain; the second is the set that exports to transformers' Qwen3 (no relu2, no soft-cap)
VARIANTS: list[tuple[str, list[str]]] = [("swiglu-for-relu2", ["--mlp", "swiglu"]),
                                         ("qwen3-exportable", ["--mlp", "swiglu", "--logit-softcap", "0"])]


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
    curve_steps = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    steps = [r["dt_ms"] / 1000 for r in rows if "dt_ms" in r]
    return {"run": str(out), "seed": seed, "settings": settings, "curve": curve, "curve_steps": curve_steps,
            "steps": max(elapsed) if elapsed else 0, "train_s": max(elapsed.values()),
            "s_per_step": statistics.median(steps[1:])}


def cached_score(run: Path, data: Path, val, seq_len: int) -> float:
    """score_run, remembered in the run directory next to the checkpoint it scored (scoring every val window
    takes a minute or two on a CPU; a report over a dozen finished runs should not redo it)."""
    from gptscratch.train.checkpoint import find_checkpoint

    key = {"checkpoint": find_checkpoint(run).name, "data": str(data.resolve()), "val_tokens": int(len(val)),
           "seq_len": seq_len}
    cache = run / "val_score.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if {k: saved.get(k) for k in key} == key:
            return saved["val_loss"]
    loss = score_run(run, val, seq_len)
    cache.write_text(json.dumps({**key, "val_loss": loss}) + "\n")
    return loss


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


def timing(presets: list[str], steps: int, repeats: int, out: Path, before: Path | None = None) -> dict:
    """Median s/step of each preset's training step, run alternately on an otherwise idle machine.

    Step times logged inside long runs are only as good as the machine was quiet then; these are not.
    `before`: also time each preset with the package from that source tree (e.g. an older commit's `src/`,
    from `git worktree add`), alternating with this one: rows `PRESET@before`. A preset may carry settings
    after a colon, `modern-demo:--mlp=swiglu`, timed as a row of that name.
    """
    import os
    import shutil

    codes = [("", None)] + ([("@before", before)] if before else [])
    times: dict[str, list[float]] = {p + tag: [] for p in presets for tag, _ in codes}
    envs = {tag: {**os.environ, "PYTHONPATH": str(src.resolve())} if src else None for tag, src in codes}
    for tag, src in codes:  # the older tree must be the one imported, or both rows time today's code
        probe = subprocess.run([sys.executable, "-c", "import gptscratch; print(gptscratch.__file__)"],
                               capture_output=True, text=True, env=envs[tag], check=True).stdout.strip()
        if src and not Path(probe).resolve().is_relative_to(src.resolve()):
            raise SystemExit(f"--before {src}: python imports gptscratch from {probe} instead")
    for r in range(repeats):
        for preset in presets:
            for tag, env in envs.items():
                name, _, extra = preset.partition(":")
                run = out / "timing" / f"{preset.replace(':', '_').replace('=', '_')}{tag}-{r}"
                shutil.rmtree(run, ignore_errors=True)  # a fresh directory: older code has no --overwrite
                subprocess.run([sys.executable, "-m", "gptscratch", "train", "--preset", name, *extra.split(),
                                "--out", str(run),
                                "--max-steps", str(steps), "--eval-interval", "0", "--ckpt-interval", "0",
                                "--num-samples", "0", "--device", "cpu"], capture_output=True, env=env)
                # the exit code is not checked: older code fails after the last step on --num-samples 0
                warm = [m["dt_ms"] / 1000 for m in read_metrics(run) if "dt_ms" in m][5:]
                if len(warm) < steps - 5:
                    raise SystemExit(f"{preset}{tag}: the timing run stopped early (see {run})")
                times[preset + tag] += warm
    result = {p: statistics.median(t) for p, t in times.items()}
    print(json.dumps(result))
    return result


def report(logs: list[Path], s_per_step: dict[str, float], plot: Path | None, alias: dict[str, str]) -> dict:
    """The tables again from finished runs: steps to reach the GPT-2 recipe's final val, and the wall-clock
    ratio from quiet s/step (`timing`) where the row's recipe was timed (keyed by row name, e.g. "gpt2")."""
    rows_by_corpus: dict[str, dict[str, list[dict]]] = {}
    for log in logs:
        result = json.loads(log.read_text().strip().splitlines()[-1])
        for corpus, rows in result["corpora"].items():
            for row in rows:
                name = row["name"]
                key = name.split(" ")[0] if name.startswith(("gpt2", "modern")) else name
                key = alias.get(key, key)  # e.g. the ablation's last step is the modern recipe itself
                for run in row["runs"]:
                    metrics = read_metrics(Path(run["run"]))
                    run["curve_steps"] = [(r["step"], r["val_loss"]) for r in metrics if "val_loss" in r]
                    run["steps"] = max(r["step"] for r in metrics if "loss" in r) + 1
                runs = rows_by_corpus.setdefault(corpus, {}).setdefault(key, [])
                # a run in two logs (the GPT-2 recipe's, which compare and ablation share) counts once
                runs.extend(r for r in row["runs"] if r["run"] not in {x["run"] for x in runs})
    out: dict = {}
    for corpus, rows in rows_by_corpus.items():
        base = rows["gpt2"]
        target = statistics.mean(r["curve_steps"][-1][1] for r in base)
        base_steps = statistics.mean(r["steps"] for r in base)
        print(f"\n{corpus}: target = the GPT-2 recipe's final val estimate {target:.3f}\n"
              "| recipe | seeds | val loss (all windows) | steps to reach the target | step ratio | s/step (quiet) | "
              "wall-clock ratio |\n|---|---|---|---|---|---|---|")
        table = []
        for name, runs in rows.items():
            reach = ([base_steps] * len(runs) if name == "gpt2"
                     else [seconds_to_reach(r["curve_steps"], target) for r in runs])
            losses = [r["val_loss"] for r in runs]
            row = {"name": name, "seeds": [r["seed"] for r in runs], "val_mean": statistics.mean(losses),
                   "val_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                   "reach_steps": statistics.mean(reach) if None not in reach else None}
            row["step_ratio"] = row["reach_steps"] / base_steps if row["reach_steps"] is not None else None
            sps, base_sps = s_per_step.get(name), s_per_step.get("gpt2")
            known = None not in (row["step_ratio"], sps, base_sps)
            row["wall_ratio"] = row["step_ratio"] * sps / base_sps if known else None
            table.append(row)
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            print(f"| {name} | {len(runs)} | {row['val_mean']:.3f} ± {row['val_std']:.3f} | "
                  f"{fmt(row['reach_steps'], '.0f')} | {fmt(row['step_ratio'], '.2f')} | {fmt(sps, '.3f')} | "
                  f"{fmt(row['wall_ratio'], '.2f')} |")
        out[corpus] = {"target": target, "rows": table}
        if plot is not None and s_per_step.get("gpt2") and s_per_step.get("modern"):
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 4.5))
            for name, color in (("gpt2", "tab:blue"), ("modern", "tab:red")):
                for i, r in enumerate(rows.get(name, [])):
                    points = [(step * s_per_step[name], v) for step, v in r["curve_steps"] if step > 0]
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, "o-", color=color, alpha=0.7, label=f"{name} recipe" if i == 0 else None)
            ax.axhline(target, color="gray", ls="--", label="GPT-2 recipe's final val")
            ax.set_xlabel("training seconds (steps x quiet s/step, 2 CPU cores)")
            ax.set_ylabel("val loss (the trainer's estimate: fixed val rows)")
            ax.set_title(f"two recipes on {Path(corpus).name}")
            ax.legend()
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = plot.with_name(f"{plot.stem}_{Path(corpus).name}{plot.suffix}")
            fig.savefig(path, dpi=100)
            print(f"wrote {path}")
    print(json.dumps(out))
    return out


def run(args: argparse.Namespace) -> int:
    if args.mode == "numpy-corpus":
        numpy_corpus(args.out)
        return 0
    if args.mode == "timing":
        timing(args.presets.split(","), args.steps, args.repeats, args.out, args.before)
        return 0
    if args.mode == "report":
        alias = dict(pair.split("=", 1) for pair in args.alias.split(",") if pair)
        report([Path(x) for x in args.logs.split(",")], json.loads(args.timing or "{}"), args.plot, alias)
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
                run["val_loss"] = cached_score(Path(run["run"]), data, val, seq_len)
                runs.append(run)
            rows.append(summarise(name, runs))
            add_reach(rows, rows[0])
            print_table(f"{args.mode} on {data} ({len(seeds)} seed(s))", rows[-1:])
        add_reach(rows, rows[0])
        print_table(f"{args.mode} on {data}: all ({len(seeds)} seed(s))", rows)
        result["corpora"][str(data)] = rows
    print(json.dumps(result))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("recipes", help="the GPT-2 recipe against the modern one, and the ablation between them",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("ablation", "compare", "numpy-corpus", "timing", "report"))
    p.add_argument("--presets", default="demo,modern-demo", help="timing: presets to time, alternately")
    p.add_argument("--steps", type=int, default=40, help="timing: steps per run (the first 5 are not counted)")
    p.add_argument("--repeats", type=int, default=2, help="timing: runs of each preset")
    p.add_argument("--before", type=Path, default=None, help="timing: also time the package in this source tree "
                   "(an older commit's src/), alternately")
    p.add_argument("--logs", default="", help="report: outputs of earlier compare/ablation runs, comma-separated")
    p.add_argument("--timing", default="", help="report: s/step per row name as JSON, e.g. from `timing`")
    p.add_argument("--plot", type=Path, default=None, help="report: a PNG of val loss against seconds")
    p.add_argument("--alias", default="", help="report: NAME=OTHER,... rows to count as another (e.g. +softcap=modern)")
    p.add_argument("--data", default="data/shakespeare", help="prepared corpora, comma-separated")
    p.add_argument("--seeds", default="1337")
    p.add_argument("--base", default="demo", help="the GPT-2 recipe's preset")
    p.add_argument("--modern", default="modern-demo", help="compare: the modern recipe's preset")
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--only", default="", help="ablation: run only these step names (comma-separated)")
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    p.set_defaults(func=run)
