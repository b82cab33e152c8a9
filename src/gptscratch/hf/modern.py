"""Modern-architecture models out to (and back from) transformers' Qwen3 and Llama.

A model with rotary positions, RMSNorm, a SwiGLU MLP and no biases is, weight for weight, a
`Qwen3ForCausalLM` (with QK-norm: Qwen3 normalises each head's q and k) or a `LlamaForCausalLM`
(without). The table is short: our fused `c_attn` splits into q/k/v, our fused SwiGLU `c_fc` into
gate/up, a parameter-free RMSNorm becomes a gain of ones, and the padded vocab rows are dropped.
Options those architectures cannot express (ReLU^2, a logit soft-cap, LayerNorm, learned positions,
biases) are refused with the option named, rather than exported into a model that computes otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from gptscratch.errors import UserError
from gptscratch.hf.tokenizer import eos_token_id
from gptscratch.io import save_safetensors, write_json
from gptscratch.model import GPT, RMS_EPS, GPTConfig
from gptscratch.tokenizer import EOT_TOKEN, Tokenizer

# The options that change what GPT-2 computes, at GPT-2's values (GPTConfig's defaults): rope_base, norm_weight
# and zero_init_proj mean nothing without rope, rmsnorm and at load time.
GPT2_OPTIONS = {f.name: f.default for f in dataclasses.fields(GPTConfig)
                if f.name in ("pos_embedding", "norm", "qk_norm", "mlp", "tie_embeddings", "logit_softcap")}


def is_gpt2(config: GPTConfig) -> bool:
    return all(getattr(config, k) == v for k, v in GPT2_OPTIONS.items())


def check_exportable(config: GPTConfig) -> str:
    """The transformers model_type this config maps onto (qwen3 or llama), or a UserError naming the option."""
    needs = (("pos_embedding", "rope", "--pos-embedding learned"), ("norm", "rmsnorm", "--norm layernorm"),
             ("mlp", "swiglu", f"--mlp {config.mlp}"), ("bias", False, "--bias true"),
             ("logit_softcap", 0.0, f"--logit-softcap {config.logit_softcap}"))
    for name, want, flag in needs:
        if getattr(config, name) != want:
            raise UserError(f"{flag} has no equivalent in transformers' Qwen3 or Llama (they need rope, rmsnorm, "
                            "swiglu, no soft-cap and no biases); this model can be exported only as itself")
    return "qwen3" if config.qk_norm else "llama"


def config_to_hf(config: GPTConfig, model_type: str, tok: Tokenizer | None = None) -> dict:
    head_dim = config.n_embd // config.n_head
    return {
        "architectures": ["Qwen3ForCausalLM" if model_type == "qwen3" else "LlamaForCausalLM"],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": tok.eot if tok else EOT_TOKEN,
        "eos_token_id": eos_token_id(config, tok),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _gain(sd: dict, name: str, dim: int) -> torch.Tensor:
    """A norm's gain; a parameter-free RMSNorm is RMSNorm with a gain of ones."""
    return sd[name] if name in sd else torch.ones(dim)


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    config = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    C, H, V, hd = config.n_embd, config.mlp_hidden, config.vocab_size, config.n_embd // config.n_head
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"][:V],
           "model.norm.weight": _gain(sd, "transformer.ln_f.weight", C)}
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][:V]
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].split(C)
        gate, up = sd[ours + "mlp.c_fc.weight"].split(H)
        out |= {
            theirs + "input_layernorm.weight": _gain(sd, ours + "ln_1.weight", C),
            theirs + "post_attention_layernorm.weight": _gain(sd, ours + "ln_2.weight", C),
            theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v, theirs + "self_attn.o_proj.weight": sd[ours + "attn.c_proj.weight"],
            theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
            theirs + "mlp.down_proj.weight": sd[ours + "mlp.c_proj.weight"],
        }
        if config.qk_norm:
            out[theirs + "self_attn.q_norm.weight"] = _gain(sd, ours + "attn.q_norm.weight", hd)
            out[theirs + "self_attn.k_norm.weight"] = _gain(sd, ours + "attn.k_norm.weight", hd)
    return {k: v.contiguous() for k, v in out.items()}


def write_modern(model: GPT, out: Path, tok: Tokenizer | None = None) -> None:
    """config.json and model.safetensors that Qwen3ForCausalLM / LlamaForCausalLM load unchanged, into the
    (new, temporary) directory `out` that hf.save_hf renames into place."""
    model_type = check_exportable(model.config)
    save_safetensors(to_hf_state_dict(model), out / "model.safetensors", metadata={"format": "pt"})
    write_json(out / "config.json", config_to_hf(model.config, model_type, tok))


def config_from_hf(cfg: dict, source: str) -> GPTConfig:
    """A transformers Qwen3/Llama config as ours; refuse what our model cannot represent (one line each)."""
    model_type = cfg.get("model_type")
    for key in ("hidden_size", "num_attention_heads", "max_position_embeddings", "vocab_size", "num_hidden_layers",
                "intermediate_size"):  # a "64" or 64.7 would convert silently below: refuse it here
        if key in cfg and (not isinstance(cfg[key], int) or isinstance(cfg[key], bool)):
            raise UserError(f"{source}: {key} is {cfg[key]!r}, expected an integer")
    if not isinstance(cfg.get("tie_word_embeddings", False), bool):
        raise UserError(f"{source}: tie_word_embeddings is {cfg['tie_word_embeddings']!r}, expected true or false")
    try:
        C, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        rope = cfg.get("rope_parameters") or {}
        config = GPTConfig(
            block_size=int(cfg["max_position_embeddings"]), vocab_size=int(cfg["vocab_size"]),
            n_layer=int(cfg["num_hidden_layers"]), n_head=heads, n_embd=C, bias=False,
            pos_embedding="rope", rope_base=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            norm="rmsnorm", norm_weight=True, qk_norm=model_type == "qwen3", mlp="swiglu",
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
        checks = (
            (cfg.get("hidden_act", "silu") == "silu", f"hidden_act {cfg.get('hidden_act')!r} (only silu: SwiGLU)"),
            (int(cfg.get("num_key_value_heads") or heads) == heads, "grouped-query attention (num_key_value_heads)"),
            (int(cfg.get("head_dim") or C // heads) == C // heads, "head_dim other than hidden_size / heads"),
            (int(cfg["intermediate_size"]) == config.mlp_hidden,
             f"intermediate_size {cfg['intermediate_size']} (ours is {config.mlp_hidden} at this width)"),
            (abs(float(cfg.get("rms_norm_eps", RMS_EPS)) - RMS_EPS) < 1e-12, f"rms_norm_eps (ours is {RMS_EPS})"),
            (not cfg.get("attention_bias") and not cfg.get("mlp_bias"), "biases"),
            (rope.get("rope_type", "default") == "default" and not cfg.get("rope_scaling"), "rope scaling"),
            (math.isfinite(config.rope_base) and config.rope_base > 1, f"rope_theta {config.rope_base}"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: missing or malformed {model_type} config field ({e})") from None
    for ok, what in checks:
        if not ok:
            raise UserError(f"{source}: {what} has no equivalent in gptscratch's model")
    return config


def load_modern(directory: Path, config: GPTConfig, hf_sd: dict[str, torch.Tensor], vocab_multiple: int) -> GPT:
    """The weights of a Qwen3/Llama directory (as `write_modern` writes them) in our layout."""
    config.vocab_multiple = vocab_multiple
    model = GPT(config)
    V = config.vocab_size
    want = to_hf_state_dict(model)  # our names -> theirs, to check names and shapes against
    extra = sorted(set(hf_sd) - set(want) - {"lm_head.weight"})
    missing = sorted(set(want) - set(hf_sd))
    if extra or missing:
        name = (extra or missing)[0]
        raise UserError(f"{directory}: {'unexpected' if extra else 'missing'} weight {name!r}; not a model "
                        "gptscratch exported, or truncated")
    for key, tensor in want.items():
        if hf_sd[key].shape != tensor.shape:
            raise UserError(f"{directory}: weight {key!r} has shape {tuple(hf_sd[key].shape)}, "
                            f"expected {tuple(tensor.shape)}")
    sd = model.state_dict()
    ours = {"transformer.wte.weight": hf_sd["model.embed_tokens.weight"],
            "transformer.ln_f.weight": hf_sd["model.norm.weight"]}
    if not config.tie_embeddings:
        ours["lm_head.weight"] = hf_sd["lm_head.weight"]
    for i in range(config.n_layer):
        mine, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        ours |= {
            mine + "ln_1.weight": hf_sd[theirs + "input_layernorm.weight"],
            mine + "ln_2.weight": hf_sd[theirs + "post_attention_layernorm.weight"],
            mine + "attn.c_attn.weight": torch.cat([hf_sd[theirs + f"self_attn.{x}_proj.weight"] for x in "qkv"]),
            mine + "attn.c_proj.weight": hf_sd[theirs + "self_attn.o_proj.weight"],
            mine + "mlp.c_fc.weight": torch.cat([hf_sd[theirs + "mlp.gate_proj.weight"],
                                                 hf_sd[theirs + "mlp.up_proj.weight"]]),
            mine + "mlp.c_proj.weight": hf_sd[theirs + "mlp.down_proj.weight"],
        }
        if config.qk_norm:
            ours[mine + "attn.q_norm.weight"] = hf_sd[theirs + "self_attn.q_norm.weight"]
            ours[mine + "attn.k_norm.weight"] = hf_sd[theirs + "self_attn.k_norm.weight"]
    with torch.no_grad():
        for name, tensor in ours.items():
            target = sd[name][:V] if name in ("transformer.wte.weight", "lm_head.weight") else sd[name]
            target.copy_(tensor)  # padded vocab rows keep their init
    return model
