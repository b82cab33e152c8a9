"""Where a model comes from: a command's `--ckpt`/`--hf` flags, and a run's starting weights (`--init-from`),
with what they decide about the run.

A source is a Hugging Face directory or hub id (GPT-2's `GPT2LMHeadModel`, or a Qwen3/Llama model as
`gptscratch export` writes a modern one) or a gptscratch checkpoint (a run, checkpoints/ or step
directory). The source fixes the model's shape and options: they are copied into the run's config (so
config.json and every checkpoint say what the model is), and a shape flag given on the command line that
contradicts the source is refused rather than silently ignored. Training settings (dropout, lr, ...) stay
the run's own.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from gptscratch.errors import UserError
from gptscratch.hf import load_hf, read_hf_config
from gptscratch.hf.modern import is_gpt2
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import VOCAB_SIZE
from gptscratch.train.checkpoint import find_checkpoint, load_checkpoint, load_model, run_dir_of
from gptscratch.train.config import MODEL_OPTIONS, TrainConfig

SHAPE = ("n_layer", "n_head", "n_embd", "bias", *MODEL_OPTIONS)


def _checkpoint_path(spec: str) -> Path | None:
    """The step directory `spec` names when it is a gptscratch checkpoint (not an HF directory), else None."""
    path = Path(spec).expanduser()
    if not path.is_dir() or (path / "config.json").exists() and not (path / "checkpoints").is_dir():
        return None  # an HF directory holds config.json; a run directory holds config.json and checkpoints/
    try:
        return find_checkpoint(path)
    except UserError:
        return None


def source_config(spec: str) -> GPTConfig:
    """The source's model config, without reading its weights."""
    step = _checkpoint_path(spec)
    if step is not None:
        return load_checkpoint(step).model_config
    return read_hf_config(spec)[2]


def with_source_shape(cfg: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """`cfg` with the model's shape taken from `cfg.init_from`; a flag in `given` that contradicts it is refused."""
    source = source_config(cfg.init_from)  # a vocabulary too small for the tokenizer is refused in reading it
    if source.vocab_size != VOCAB_SIZE:  # a run's model has the tokenizer's rows, padded by --vocab-multiple
        raise UserError(f"--init-from {cfg.init_from}: vocab_size {source.vocab_size}, not GPT-2's {VOCAB_SIZE} "
                        "tokens; a run pads its vocabulary itself (--vocab-multiple)")
    shape = {name: getattr(source, name) for name in SHAPE}
    for name, value in shape.items():
        if name in given and given[name] != value:
            flag = name.replace("_", "-")
            raise UserError(f"--{flag} {given[name]} contradicts --init-from {cfg.init_from}, whose {name} is "
                            f"{value}; the model's shape comes from the source (drop --{flag})")
    if cfg.seq_len > source.block_size:
        raise UserError(f"--seq-len {cfg.seq_len} exceeds the context of --init-from {cfg.init_from} "
                        f"({source.block_size} tokens); use --seq-len {source.block_size} or less")
    shape["arch"] = "gpt2" if is_gpt2(source) and source.bias else "modern"  # a label: the options say the rest
    if "arch" in given and given["arch"] != shape["arch"]:
        raise UserError(f"--arch {given['arch']} contradicts --init-from {cfg.init_from}, a {shape['arch']} model")
    if _checkpoint_path(cfg.init_from):
        shape["vocab_multiple"] = source.vocab_multiple  # its padded rows are part of its weights
    return dataclasses.replace(cfg, **shape, block_size=source.block_size)


def load_source(cfg: TrainConfig) -> GPT:
    """A model of `cfg`'s shape (from `with_source_shape`) holding the source's weights."""
    step = _checkpoint_path(cfg.init_from)
    source = load_model(step) if step is not None else load_hf(cfg.init_from, vocab_multiple=cfg.vocab_multiple)
    model = GPT(cfg.model_config())  # the run's own dropout; the shape is the source's
    model.load_state_dict(source.state_dict())
    return model


# --- a command's model: --ckpt or --hf ------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf", metavar="DIR_OR_ID", help="Hugging Face GPT-2 directory or hub id (gpt2, gpt2-xl, ...)")
    p.add_argument("--ckpt", metavar="PATH", help="a gptscratch checkpoint (run dir, checkpoints/ dir or one step)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def check_model_args(args: argparse.Namespace) -> None:
    """Before any download or file read: exactly one of --hf and --ckpt."""
    if bool(args.hf) == bool(args.ckpt):
        raise UserError("give exactly one of --hf DIR_OR_ID or --ckpt PATH")


def load_model_arg(args: argparse.Namespace, device: torch.device) -> GPT:
    """The model named by --hf or --ckpt (checked by check_model_args), on `device`, in eval mode."""
    model = load_hf(args.hf) if args.hf else load_model(args.ckpt)
    return model.to(device).eval()


def model_name(args: argparse.Namespace) -> str:
    """The id a served model goes by: its run directory's name (runs/demo -> demo), or the --hf dir or id."""
    if args.hf:
        return Path(args.hf).name if Path(args.hf).exists() else args.hf
    step = find_checkpoint(args.ckpt).resolve()
    return (run_dir_of(step) or step).name
