"""`gptscratch train`: its flags (generated from `TrainConfig`), and which run a command line means.

`resolve_run` decides, once, which config a run has and which checkpoint it continues; `train.loop` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from gptscratch.errors import UserError
from gptscratch.hf.pretrained import with_source_shape
from gptscratch.io import append_text
from gptscratch.train import checkpoint as ckpt
from gptscratch.train.config import (
    PRESETS,
    TrainConfig,
    add_config_arguments,
    config_from_dict,
    given_settings,
    resolve_config,
    setting_flags,
)
from gptscratch.train.loop import train


def resolve_run(settings: dict[str, Any], resume: str | None) -> tuple[TrainConfig, ckpt.Checkpoint | None]:
    """The run's config and the checkpoint it continues (None: a new run), from the command line's settings.

    `--resume` alone continues the newest checkpoint of the run directory, or starts a new run when there is
    none yet, so that a preemptible job can always be launched with --resume; `--resume PATH` must name a
    checkpoint. A resumed run keeps its saved config; settings given again win (e.g. a longer --max-steps).
    It writes into --out if given, else into the run directory holding the checkpoint: never into the `out`
    saved in the checkpoint, which may have been copied from elsewhere.
    """
    preset = settings.get("preset", "demo")
    named = Path(settings["out"]) if settings.get("out") else None
    path = None
    if resume:
        run_dir = named or Path(f"runs/{preset}")
        try:
            path = ckpt.find_checkpoint(run_dir if resume == "latest" else resume)
        except UserError:
            if resume != "latest":
                raise
            print(f"gptscratch train: no checkpoint in {run_dir} yet, starting a new run", file=sys.stderr)
    if path is None:
        cfg = resolve_config(preset, settings)
        return (with_source_shape(cfg, settings) if cfg.init_from else cfg), None
    saved = ckpt.load_checkpoint(path)  # state.json, read once; the weights and optimizer state, in setup
    run_dir = named or ckpt.run_dir_of(saved.path)
    if run_dir is None:
        raise UserError(f"--resume {resume}: {saved.path} is not in a run directory's checkpoints/; name the "
                        "directory to continue in with --out")
    # A preset sets many fields at once, and a resumed run keeps its saved ones: a different --preset would
    # be recorded in config.json without taking effect. Refused, since the fix (give the single settings to
    # change, or drop --preset) is one edit, where a warning would leave a mislabelled run.
    if "preset" in settings and settings["preset"] != saved.config.get("preset"):
        raise UserError(f"--preset {settings['preset']}: {saved.path} was trained with --preset "
                        f"{saved.config.get('preset')}, and a resumed run keeps its saved config; drop --preset, or "
                        "give the single settings to change")
    # A resumed run's weights are its checkpoint's: another --init-from would be recorded as its source in
    # config.json (and reported as what it was fine-tuned from) without a weight of it being read. The same
    # source as the checkpoint's is accepted, so that a preemptible fine-tune relaunches with one command line.
    source = saved.config.get("init_from") or ""
    if "init_from" in settings and settings["init_from"] != source:
        began = f"from --init-from {source}" if source else "from random weights"
        raise UserError(f"--init-from {settings['init_from']}: {saved.path} continues a run that began {began}, "
                        "and a resumed run starts from its checkpoint's weights; drop --init-from, or start a new "
                        "run into another --out")
    # --overwrite is this command's decision, never inherited from the run that saved the checkpoint
    overrides = {"overwrite": False, **settings, "out": str(run_dir)}
    try:
        return config_from_dict({**saved.config, **overrides}), saved
    except UserError as e:
        raise UserError(f"{e} (in the config of {saved.path} with this command's settings)") from None


def report_finetune(run_dir: Path, source: str, result: dict) -> None:
    """What fine-tuning bought: the starting model's val loss (the step-0 evaluation, before any update)
    against the last one, printed and logged as one metrics.jsonl record."""
    path = run_dir / "metrics.jsonl"
    start = next((r["val_loss"] for r in map(json.loads, path.read_text().splitlines())
                  if r.get("step") == 0 and "val_loss" in r), None)
    if start is None or result["val_loss"] is None:
        return  # --eval-interval 0: nothing to compare
    append_text(path, json.dumps({"step": result["step"], "init_val_loss": start,
                                  "final_val_loss": result["val_loss"]}) + "\n")
    print(f"fine-tuning from {source}: val loss {start:.4f} at the start, {result['val_loss']:.4f} at the end")


def cmd_train(args: argparse.Namespace) -> int:
    cfg, saved = resolve_run(given_settings(args), args.resume)
    if saved is not None and saved.step >= cfg.max_steps:
        # nothing to train: say so (a relaunched job that already finished), leaving the run as it is
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"done already: the run is complete at step {saved.step} (--max-steps {cfg.max_steps}); its "
                  f"checkpoint is {saved.path}. Train further with a larger --max-steps, or sample with: "
                  f"gptscratch sample --ckpt {saved.path}")
        return 0
    result = train(cfg, saved, resuming=args.resume is not None)
    if result.get("stopped") or int(os.environ.get("RANK", "0")) != 0:
        return 0
    run_dir = result["run_dir"]
    if cfg.init_from:
        report_finetune(Path(run_dir), cfg.init_from, result)
    plot = f", plot {result['plot']}" if result.get("plot") else ""
    val = f", val loss {result['val_loss']:.4f}" if result["val_loss"] is not None else ""
    prompt = cfg.sample_prompt.strip().splitlines()[0] if cfg.sample_prompt.strip() else ""
    prompt = f" --prompt {shlex.quote(prompt)}" if prompt and prompt != "<|endoftext|>" else ""
    use = f"Chat with it: gptscratch chat --ckpt {run_dir}" if cfg.chat else \
        f"Sample with: gptscratch sample --ckpt {run_dir}{prompt}"
    print(f"done: {result['step']} steps{val}. Checkpoint {result.get('checkpoint')}, metrics {run_dir}/metrics.jsonl"
          f"{plot}. {use}")
    return 0


def register(sub) -> None:
    def shown(v: Any) -> str:
        return shlex.quote(v) if isinstance(v, str) and v.isprintable() else repr(v) if isinstance(v, str) else str(v)

    presets = "; ".join(f"{name}: " + " ".join(f"--{k.replace('_', '-')} {shown(v)}" for k, v in values.items())
                        for name, values in PRESETS.items())
    p = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train a GPT (default: the demo preset on Shakespeare)",
        description=(
            "Train a GPT-2. Every setting of the training config is a flag (--key value, --key=value; dashes or "
            "underscores); a preset sets several at once, and flags given with it win. The defaults below are "
            "before a preset applies. Under torchrun it runs DDP."
        ),
        epilog=f"presets: {presets}. Example: gptscratch train --preset gpt2-124m --data data/fineweb-edu "
               "--max-steps 100".replace("%", "%%"),
    )
    add_config_arguments(p)
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                   help="continue the newest checkpoint of the run dir (a new run if it has none yet), or PATH")
    p.set_defaults(func=cmd_train, known_flags=setting_flags())
