"""Hugging Face checkpoints in and out: `load_hf` reads a transformers directory (or hub id) as our GPT, and
`save_hf` writes one transformers loads unchanged.

GPT-2 is `GPT2LMHeadModel` (`hf.gpt2`: the Conv1D transpose table); a modern model is Qwen3 or Llama
(`hf.modern`). `hf.pretrained` says where `--init-from`, `--ckpt` and `--hf` weights come from.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from gptscratch.errors import UserError
from gptscratch.hf.gpt2 import config_from_hf, load_gpt2, write_gpt2
from gptscratch.hf.modern import check_exportable, is_gpt2, load_modern, write_modern
from gptscratch.hf.modern import config_from_hf as modern_config_from_hf
from gptscratch.hf.tokenizer import write_tokenizer, write_trained_tokenizer
from gptscratch.io import atomic_dir, read_safetensors, writing
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import Tokenizer, tokenizer_of
from gptscratch.train.checkpoint import load_checkpoint

HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def _resolve(path_or_id: str) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{path}: expected a directory holding config.json and model.safetensors")
    looks_like_hub_id = path_or_id in HUB_IDS or (
        path_or_id.count("/") == 1 and not path_or_id.startswith((".", "/"))
    )
    if not looks_like_hub_id:
        raise UserError(
            f"{path}: no such directory (expected config.json + model.safetensors, or a hub id like 'gpt2')"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"cannot fetch {path_or_id!r}: huggingface_hub is not installed (pip install 'gptscratch[hf]'), "
            "or pass a local directory holding config.json and model.safetensors"
        ) from None
    try:
        local = snapshot_download(path_or_id, allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # offline, unknown id, auth: all end the same way for the user
        raise UserError(
            f"cannot download {path_or_id!r} from the Hugging Face hub ({type(e).__name__}); "
            "pass a local directory holding config.json and model.safetensors instead"
        ) from None
    return Path(local)


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    st = directory / "model.safetensors"
    if st.exists():
        return read_safetensors(st)
    bin_path = directory / "pytorch_model.bin"
    if bin_path.exists():
        try:
            return torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refusing a pickle explains itself over several lines: keep the gist
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
            gist = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0])
            raise UserError(f"{bin_path}: cannot be loaded as a weights-only PyTorch file ({gist})") from None
    raise UserError(f"{directory}: holds neither model.safetensors nor pytorch_model.bin")


def read_hf_config(path_or_id: str) -> tuple[Path, str, GPTConfig, Tokenizer]:
    """(directory, model_type, our config, its tokenizer) of a Hugging Face directory or hub id, without reading
    weights.

    GPT-2 (GPT2LMHeadModel) is GPT-2 exactly; Qwen3 and Llama are read as the modern options they match
    (the directories `gptscratch export` writes for rope/rmsnorm/swiglu models).
    """
    directory = _resolve(path_or_id)
    cfg_path = directory / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{cfg_path}: missing (a Hugging Face model directory needs config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{cfg_path}: not a JSON object")
    model_type = cfg.get("model_type")
    if model_type in ("qwen3", "llama"):
        config = modern_config_from_hf(cfg, str(cfg_path))
    elif model_type == "gpt2":
        config = config_from_hf(cfg, str(cfg_path))
    else:
        raise UserError(f"{cfg_path}: model_type is {model_type!r}; gptscratch reads gpt2, and the qwen3 or llama "
                        "models it exports")
    # every reader of HF models passes here: a vocabulary that cannot hold its tokenizer's ids is refused
    tokenizer = tokenizer_of(directory, vocab_size=config.vocab_size, where=str(cfg_path))
    return directory, model_type, config, tokenizer


def load_hf_model(path_or_id: str, vocab_multiple: int = 1) -> tuple[GPT, Tokenizer]:
    """A Hugging Face checkpoint (a local directory or a hub id like `gpt2`) as our GPT: a GPT2LMHeadModel,
    or a Qwen3/Llama model of the shape gptscratch exports; and its tokenizer (an export's own copy in
    `tokenizer/`, else GPT-2's)."""
    directory, model_type, config, tokenizer = read_hf_config(path_or_id)
    hf_sd = _read_state_dict(directory)
    load = load_gpt2 if model_type == "gpt2" else load_modern
    return load(directory, config, hf_sd, vocab_multiple), tokenizer


def load_hf(path_or_id: str, vocab_multiple: int = 1) -> GPT:
    """`load_hf_model`'s model alone."""
    return load_hf_model(path_or_id, vocab_multiple)[0]


def save_hf(model: GPT, directory: str | os.PathLike, overwrite: bool = False,
            tokenizer: Tokenizer | None = None) -> Path:
    """Write config.json, model.safetensors and the tokenizer's files (`hf.tokenizer`: GPT-2's by default, or a
    trained `tokenizer`'s, with a copy of its directory in `tokenizer/` for gptscratch's own commands), which
    transformers loads unchanged and offline, as a directory renamed into place whole (io.atomic_dir): a failure
    leaves no half export, and a replaced one no stale files.

    A GPT-2 model becomes a GPT2LMHeadModel; a modern one a Qwen3/Llama model (gptscratch.hf.modern). A
    non-empty `directory` is refused unless `overwrite`, which replaces it only if it holds a config.json
    (an earlier export), never a directory of other things.
    """
    check_export_dir(directory, overwrite)
    out = Path(directory).resolve()
    if is_gpt2(model.config):
        if not model.config.bias:
            raise UserError("--bias false has no GPT2LMHeadModel equivalent (GPT-2 always has biases)")
        write = write_gpt2
    else:
        check_exportable(model.config)
        write = write_modern
    if not out.parent.exists():
        with writing(out.parent):
            out.parent.mkdir(parents=True)
    with atomic_dir(out) as tmp:
        write(model, tmp, tokenizer)
        if tokenizer is None or tokenizer.sha256 is None:
            write_tokenizer(tmp, model.config)
        else:
            write_trained_tokenizer(tmp, tokenizer.enc, tokenizer.manifest(), model.config.block_size)
            tokenizer.copy_into(tmp)
    return Path(directory)


def check_export_dir(directory: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an export into a file, or into a non-empty directory unless `overwrite` and it is an earlier export."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out}: not empty; choose a new or empty directory, or pass --overwrite to "
                            "replace an earlier export")
        if not (out / "config.json").is_file():
            raise UserError(f"--out {out}: holds no config.json, so it is not an earlier export; --overwrite "
                            "replaces only those")


# --- gptscratch export ---------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    check_export_dir(args.out, args.overwrite)  # before the (maybe long) load of the checkpoint
    saved = load_checkpoint(args.ckpt)
    path = save_hf(saved.load_model(), args.out, overwrite=args.overwrite, tokenizer=saved.tokenizer)
    arch = json.loads((Path(path) / "config.json").read_text())["architectures"][0]
    print(f"wrote a Hugging Face checkpoint to {path} (load it with {arch}.from_pretrained)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face GPT-2 directory",
                       description="Export a gptscratch checkpoint to config.json + model.safetensors.")
    p.add_argument("--ckpt", required=True, metavar="PATH")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out (a directory "
                   "holding config.json), as a whole")
    p.set_defaults(func=cmd_export)
