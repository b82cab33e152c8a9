"""GPT-2 in transformers' layout (GPT2LMHeadModel), in and out.

OpenAI's GPT-2 used a `Conv1D` layer that stores its weight as (in, out); `nn.Linear` stores (out, in).
That transpose, for four weights per block, is the whole difference between the two layouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptscratch.errors import UserError
from gptscratch.hf.tokenizer import eos_token_id
from gptscratch.io import save_safetensors, write_json
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import EOT_TOKEN, Tokenizer

# Weights stored by Conv1D, which need a transpose either way.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some old checkpoints carry (the causal mask); not parameters.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
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


def config_to_hf(config: GPTConfig, tok: Tokenizer | None = None) -> dict:
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
        "bos_token_id": tok.eot if tok else EOT_TOKEN,
        "eos_token_id": eos_token_id(config, tok),
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


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


def write_gpt2(model: GPT, out: Path, tok: Tokenizer | None = None) -> None:
    tensors = {k: v.to("cpu", torch.float32).contiguous() for k, v in to_hf_state_dict(model).items()}
    save_safetensors(tensors, out / "model.safetensors", metadata={"format": "pt"})
    write_json(out / "config.json", config_to_hf(model.config, tok))


def load_gpt2(directory: Path, config: GPTConfig, hf_sd: dict[str, torch.Tensor], vocab_multiple: int) -> GPT:
    """A GPT2LMHeadModel's weights (`hf_sd`, read from `directory`) in our GPT of `config`."""
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
