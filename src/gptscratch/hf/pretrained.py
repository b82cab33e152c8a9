"""Where a model comes from: a command's `--ckpt`/`--hf` flags, and a run's starting weights (`--init-from`),
with what they decide about the run.

A source is a Hugging Face directory or hub id (GPT-2's `GPT2LMHeadModel`, or a Qwen3/Llama model as
`gptscratch export` writes a modern one) or a gptscratch checkpoint (a run, checkpoints/ or step
directory). The source fixes the model's shape and options: they are copied into the run's config (so
config.json and every checkpoint say what the model is), and a shape flag given on the command line that
contradicts the source is refused rather than silently ignored. Training settings (dropout, lr, ...) stay
the run's own.

A chat run (`--chat`, `--preset sft`) from a source that never learned the chat tokens starts each chat token
as a typical token of the source: the mean of its token embeddings (and of its head's rows, when untied) plus
noise of their per-dimension spread, drawn from the run's seeded generator. The rows the padding held are
untrained (a random init, or pushed down by every softmax of pretraining): as outputs their logits could stand
far above or below the real tokens', and the first steps would spend themselves on that; a draw around the mean
stands where the real tokens stand (Hewitt, "Initializing new word embeddings for pretrained language models",
2021). The noise tells the four apart from the first step: on tests/test_sft.py's rule, SFT from a random
base reached all 12 answers in 120 steps this way, 10 of 12 from the mean alone (val loss 0.45 against 0.66).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from gptscratch.chat import CHAT_VOCAB_SIZE, is_chat_model
from gptscratch.errors import UserError
from gptscratch.hf import load_hf_model, read_hf_config
from gptscratch.hf.modern import is_gpt2
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import VOCAB_SIZE, Tokenizer, check_same
from gptscratch.train.checkpoint import find_checkpoint, load_checkpoint, run_dir_of
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


def source_config(spec: str) -> tuple[GPTConfig, Tokenizer]:
    """The source's model config and tokenizer, without reading its weights."""
    step = _checkpoint_path(spec)
    if step is not None:
        saved = load_checkpoint(step)
        return saved.model_config, saved.tokenizer
    return read_hf_config(spec)[2:]


def with_source_shape(cfg: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """`cfg` with the model's shape taken from `cfg.init_from`; a flag in `given` that contradicts it is refused."""
    source, tok = source_config(cfg.init_from)  # a vocabulary too small for the tokenizer is refused in reading it
    gpt2_tokenizer = tok.sha256 is None  # a trained tokenizer's model has its vocabulary exactly (tokenizer_of)
    if gpt2_tokenizer and source.vocab_size not in (VOCAB_SIZE, CHAT_VOCAB_SIZE):  # a run pads it (--vocab-multiple)
        raise UserError(f"--init-from {cfg.init_from}: vocab_size {source.vocab_size}, not GPT-2's {VOCAB_SIZE} "
                        f"tokens (or {CHAT_VOCAB_SIZE} with the chat tokens); a run pads its vocabulary itself")
    if gpt2_tokenizer and is_chat_model(source) and not cfg.chat:
        raise UserError(f"--init-from {cfg.init_from}: a chat model; train it further on conversations with "
                        "--preset sft (or --chat)")
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


def load_source(cfg: TrainConfig, tokenizer: Tokenizer) -> GPT:
    """A model of `cfg`'s shape (from `with_source_shape`) for the run's `tokenizer` (its data's, which must be the
    source's) holding the source's weights."""
    step = _checkpoint_path(cfg.init_from)
    if step is not None:
        saved = load_checkpoint(step)
        source, source_tokenizer = saved.load_model(), saved.tokenizer
    else:
        source, source_tokenizer = load_hf_model(cfg.init_from, vocab_multiple=cfg.vocab_multiple)
    check_same(source_tokenizer, f"--init-from {cfg.init_from}", tokenizer, f"--data {cfg.data}")
    model = GPT(cfg.model_config(tokenizer.vocab_size))  # the run's own dropout; the shape is the source's
    state = source.state_dict()
    if cfg.chat and tokenizer.sha256 is None and not is_chat_model(source.config):  # GPT-2's, without chat rows
        state = with_chat_rows(state, model)
    model.load_state_dict(state)
    return model


def with_chat_rows(state: dict[str, torch.Tensor], model: GPT) -> dict[str, torch.Tensor]:
    """A non-chat source's weights for the chat model `model`: each vocabulary matrix (the embedding, and the
    head when untied) has the source's real rows, the chat tokens' rows drawn around their mean with their
    per-dimension spread, and `model`'s own init in any padding left (a source padded to fewer rows)."""
    out = dict(state)
    own = model.state_dict()
    made: dict[int, torch.Tensor] = {}  # a tied head is the embedding: one draw for both names
    for name in ("transformer.wte.weight", "lm_head.weight"):
        if name not in state:
            continue
        source = state[name]
        if source.data_ptr() not in made:
            rows = own[name].clone()
            rows[: min(len(rows), len(source))] = source[: len(rows)]
            real = source[:VOCAB_SIZE].float()
            noise = torch.randn(CHAT_VOCAB_SIZE - VOCAB_SIZE, real.size(1)) * real.std(dim=0)
            rows[VOCAB_SIZE:CHAT_VOCAB_SIZE] = (real.mean(dim=0) + noise).to(rows.dtype)
            made[source.data_ptr()] = rows
        out[name] = made[source.data_ptr()]
    return out


# --- a command's model: --ckpt or --hf ------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hf", metavar="DIR_OR_ID", help="Hugging Face GPT-2 directory or hub id (gpt2, gpt2-xl, ...)")
    p.add_argument("--ckpt", metavar="PATH", help="a gptscratch checkpoint (run dir, checkpoints/ dir or one step)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")


def check_model_args(args: argparse.Namespace) -> None:
    """Before any download or file read: exactly one of --hf and --ckpt."""
    if bool(args.hf) == bool(args.ckpt):
        raise UserError("give exactly one of --hf DIR_OR_ID or --ckpt PATH")


def load_model_arg(args: argparse.Namespace, device: torch.device) -> tuple[GPT, Tokenizer]:
    """The model named by --hf or --ckpt (checked by check_model_args), on `device`, in eval mode, and its
    tokenizer (the copy beside its weights, else GPT-2's)."""
    if args.hf:
        model, tok = load_hf_model(args.hf)
    else:
        saved = load_checkpoint(args.ckpt)
        model, tok = saved.load_model(), saved.tokenizer
    return model.to(device).eval(), tok


def model_name(args: argparse.Namespace) -> str:
    """The id a served model goes by: its run directory's name (runs/demo -> demo), or the --hf dir or id."""
    if args.hf:
        return Path(args.hf).name if Path(args.hf).exists() else args.hf
    step = find_checkpoint(args.ckpt).resolve()
    return (run_dir_of(step) or step).name
