"""Hugging Face GPT-2 checkpoints in and out.

OpenAI's GPT-2 used a `Conv1D` layer that stores its weight as (in, out); `nn.Linear` stores (out, in).
That transpose, for four weights per block, is the whole difference between the two layouts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gptscratch.errors import UserError
from gptscratch.hf_modern import check_exportable, is_gpt2, load_modern, write_modern
from gptscratch.hf_modern import config_from_hf as modern_config_from_hf
from gptscratch.io import atomic_dir, read_safetensors, save_safetensors, write_json, writing
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import check_model_vocab

# Weights stored by Conv1D, which need a transpose either way.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some old checkpoints carry (the causal mask); not parameters.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
REQUIRED = object()  # config_from_hf: a field without a default


def config_from_hf(cfg: dict, source: str) -> GPTConfig:
    """Map a transformers GPT2Config dict onto ours; refuse what our model cannot represent."""
    if not isinstance(cfg, dict):
        raise UserError(f"{source}: expected a JSON object of GPT-2 config fields")

    def get(key: str, kinds: tuple[type, ...], default: Any = REQUIRED) -> Any:
        """cfg[key], of one of `kinds` (a bool is no int here), or a one-line UserError naming it."""
        if key not in cfg and default is not REQUIRED:
            return default
        if key not in cfg:
            raise UserError(f"{source}: missing GPT-2 config field {key!r}")
        value = cfg[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise UserError(f"{source}: {key} is {value!r}, expected {names}")
        return value

    if cfg.get("model_type") != "gpt2":
        raise UserError(f"{source}: model_type is {cfg.get('model_type')!r}, expected 'gpt2' (a GPT2LMHeadModel)")
    act = get("activation_function", (str,), "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"{source}: activation_function {act!r} is not GPT-2's tanh GELU ('gelu_new')")
    eps = get("layer_norm_epsilon", (int, float), 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise UserError(f"{source}: layer_norm_epsilon={eps}, expected GPT-2's 1e-05")
    if get("scale_attn_by_inverse_layer_idx", (bool,), False) or get("scale_attn_weights", (bool,), True) is False:
        raise UserError(f"{source}: attention scaling differs from GPT-2's 1/sqrt(head_dim)")
    theirs = {"block_size": "n_positions", "vocab_size": "vocab_size", "n_layer": "n_layer", "n_head": "n_head",
              "n_embd": "n_embd"}
    shape = {ours: get(key, (int,)) for ours, key in theirs.items()}
    if get("n_inner", (int, type(None)), None) not in (None, 4 * shape["n_embd"]):
        raise UserError(f"{source}: n_inner={cfg['n_inner']}, expected 4 * n_embd")
    if get("tie_word_embeddings", (bool,), True) is False:
        raise UserError(f"{source}: tie_word_embeddings is false; GPT-2 ties the LM head to the embedding")
    config = GPTConfig(**shape, dropout=0.0, bias=True)
    try:
        config.validate()
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    return config


def config_to_hf(config: GPTConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "scale_attn_weights": True,
        "use_cache": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


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


def read_hf_config(path_or_id: str) -> tuple[Path, str, GPTConfig]:
    """(directory, model_type, our config) of a Hugging Face directory or hub id, without reading weights.

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
    check_model_vocab(config.vocab_size, str(cfg_path))  # every reader of HF models passes here
    return directory, model_type, config


def load_hf(path_or_id: str, vocab_multiple: int = 1) -> GPT:
    """A Hugging Face checkpoint (a local directory or a hub id like `gpt2`) as our GPT: a GPT2LMHeadModel,
    or a Qwen3/Llama model of the shape gptscratch exports."""
    directory, model_type, config = read_hf_config(path_or_id)
    hf_sd = _read_state_dict(directory)
    if model_type != "gpt2":
        return load_modern(directory, config, hf_sd, vocab_multiple)
    config.vocab_multiple = vocab_multiple

    model = GPT(config)
    sd = model.state_dict()
    loaded: set[str] = set()
    for key, tensor in hf_sd.items():
        if key.endswith(IGNORED_SUFFIXES) or key == "lm_head.weight":
            continue  # the head is tied to wte
        name = key if key.startswith("transformer.") else "transformer." + key  # OpenAI's files lack the prefix
        if name not in sd:
            raise UserError(f"{directory}: unexpected weight {key!r}; not a GPT-2 checkpoint")
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        target = sd[name]
        if name == "transformer.wte.weight":
            target = target[: config.vocab_size]  # padded rows keep their init
        if tensor.shape != target.shape:
            raise UserError(
                f"{directory}: weight {key!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(tensor)
        loaded.add(name)
    missing = [k for k in sd if k not in loaded and k != "lm_head.weight"]
    if missing:
        raise UserError(f"{directory}: missing {len(missing)} weights, e.g. {missing[0]!r}; truncated checkpoint?")
    return model


def to_hf_state_dict(model: GPT, trim_vocab: bool = True) -> dict[str, torch.Tensor]:
    """`model`'s weights as transformers' GPT2LMHeadModel holds them: the Conv1D weights transposed and
    the tied LM head left out (transformers ties it again on load). `trim_vocab` drops the padded rows of
    the embedding, which a GPT-2 checkpoint does not have; the benchmarks keep them, so that both models
    multiply by the same padded head."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        t = tensor.detach()
        if trim_vocab and name == "transformer.wte.weight":
            t = t[: model.config.vocab_size]
        out[name] = t.t() if name.endswith(CONV1D_SUFFIXES) else t
    return out


def save_hf(model: GPT, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write config.json and model.safetensors that transformers loads unchanged, as a directory renamed into
    place whole (io.atomic_dir): a failure leaves no half export, and a replaced one no stale files.

    A GPT-2 model becomes a GPT2LMHeadModel; a modern one a Qwen3/Llama model (gptscratch.hf_modern). A
    non-empty `directory` is refused unless `overwrite`, which replaces it only if it holds a config.json
    (an earlier export), never a directory of other things.
    """
    check_export_dir(directory, overwrite)
    out = Path(directory).resolve()
    if is_gpt2(model.config):
        if not model.config.bias:
            raise UserError("--bias false has no GPT2LMHeadModel equivalent (GPT-2 always has biases)")
        write = _write_gpt2
    else:
        check_exportable(model.config)
        write = write_modern
    if not out.parent.exists():
        with writing(out.parent):
            out.parent.mkdir(parents=True)
    with atomic_dir(out) as tmp:
        write(model, tmp)
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


def _write_gpt2(model: GPT, out: Path) -> None:
    tensors = {k: v.to("cpu", torch.float32).contiguous() for k, v in to_hf_state_dict(model).items()}
    save_safetensors(tensors, out / "model.safetensors", metadata={"format": "pt"})
    write_json(out / "config.json", config_to_hf(model.config))
