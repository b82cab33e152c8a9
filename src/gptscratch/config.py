"""The training configuration: one dataclass, named presets, and `--key value` overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass

from gptscratch.data.loader import shuffle_mode
from gptscratch.device import ATTENTION_BACKENDS
from gptscratch.errors import UserError
from gptscratch.model import GPTConfig


@dataclass
class TrainConfig:
    preset: str = "demo"
    # where things are
    data: str = "data/shakespeare"  # a directory of token shards made by `gptscratch prepare`
    out: str = ""  # run directory; empty means runs/<preset>
    init_from: str = ""  # start from a Hugging Face GPT-2 directory or hub id instead of random weights
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 0  # 0: the same as seq_len
    vocab_multiple: int = 64  # pad the vocab to 50304: faster matmuls, padded rows never sampled
    dropout: float = 0.0
    bias: bool = True
    # the model's architecture: gpt2 (exactly GPT-2) or modern (ARCHS below); the options after it
    # override single pieces of the set (their meaning: gptscratch.model.GPTConfig)
    arch: str = "gpt2"
    pos_embedding: str = "learned"  # learned or rope
    rope_base: float = 10000.0
    norm: str = "layernorm"  # layernorm or rmsnorm
    norm_weight: bool = True  # rmsnorm with a learned gain (False: parameter-free)
    qk_norm: bool = False
    mlp: str = "gelu"  # gelu, relu2 or swiglu
    tie_embeddings: bool = True
    logit_softcap: float = 0.0  # 0: off
    zero_init_proj: bool = False
    # batch: total_batch_tokens = batch_size * seq_len * world_size * grad_accum_steps
    batch_size: int = 64  # micro-batch per process
    seq_len: int = 1024
    total_batch_tokens: int = 524_288  # 0: one micro-batch per process, no accumulation
    # optimisation
    lr: float = 6e-4  # the peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 715
    max_steps: int = 19_073
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    # adamw: AdamW for everything (GPT-2); muon: Muon for the blocks' 2-D matrices, AdamW for the rest
    optimizer: str = "adamw"
    muon_lr: float = 0.0  # Muon's peak lr (scaled to match AdamW's update RMS); 0: the same as lr
    muon_momentum: float = 0.95
    schedule: str = "cosine"  # cosine: warmup then cosine decay; wsd: warmup, constant, linear decay
    decay_frac: float = 0.2  # wsd: the final fraction of max_steps that decays to min_lr
    # evaluation and logging
    eval_interval: int = 250
    eval_batches: int = 20
    hellaswag_interval: int = 0  # 0: off
    hellaswag_file: str = ""  # empty: download the official val set into the cache
    hellaswag_limit: int = 0  # 0: every example
    sample_interval: int = 0  # 0: only at the end
    num_samples: int = 2
    sample_tokens: int = 64
    sample_prompt: str = "<|endoftext|>"
    log_interval: int = 1
    # checkpoints
    ckpt_interval: int = 1000
    keep: int = 3  # newest checkpoints kept; 0 keeps all
    # runtime
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, else float32
    compile: str = "auto"  # auto: on for CUDA, off elsewhere; or true/false
    # torch.compile's mode: default, max-autotune-no-cudagraphs (searches matmul kernels: slower to compile),
    # max-autotune or reduce-overhead (both add CUDA graphs; single process, no DDP)
    compile_mode: str = "default"
    attention: str = "auto"  # the SDPA kernel for training: auto (torch picks), flash, cudnn, efficient or math
    # training batch order: rows (each epoch, every seq_len row of the split once, in a seeded random order),
    # shards (llm.c's stream: consecutive windows, shard order reshuffled each epoch) or none (consecutive, in order)
    shuffle: str = "rows"
    # auto: the chunked LM head + cross-entropy (never holds full logits) on CPUs, where it is faster;
    # full logits on CUDA, where compiled full logits measured 2% faster on an H100 (benchmarks/RESULTS.md)
    loss_impl: str = "auto"

    def model_config(self) -> GPTConfig:
        return GPTConfig(
            block_size=self.block_size or self.seq_len,
            vocab_size=50257,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            dropout=self.dropout,
            bias=self.bias,
            vocab_multiple=self.vocab_multiple,
            **{name: getattr(self, name) for name in MODEL_OPTIONS},
        )

    @property
    def min_lr(self) -> float:
        return self.lr * self.min_lr_ratio

    def run_dir(self) -> str:
        return self.out or f"runs/{self.preset}"


MODEL_OPTIONS = ("pos_embedding", "rope_base", "norm", "norm_weight", "qk_norm", "mlp", "tie_embeddings",
                 "logit_softcap", "zero_init_proj")
ARCHS: dict[str, dict] = {
    "gpt2": {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in (*MODEL_OPTIONS, "bias")},
    # chosen by the ablation in benchmarks/RESULTS.md ("Two recipes")
    "modern": dict(bias=False, pos_embedding="rope", norm="rmsnorm", norm_weight=False, qk_norm=True, mlp="relu2",
                   tie_embeddings=False, logit_softcap=15.0, zero_init_proj=True),
}


def _gpt3(n_layer: int, n_head: int, n_embd: int, lr: float, total: int, micro: int) -> dict:
    """A GPT-2 size trained for 10B tokens with the GPT-3 paper's batch and learning rate (Table 2.1)."""
    steps = 10_000_000_000 // total
    return dict(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, lr=lr, total_batch_tokens=total, batch_size=micro,
        max_steps=steps, warmup_steps=375_000_000 // total, hellaswag_interval=250,
    )


PRESETS: dict[str, dict] = {
    # About 5 minutes on 2 CPU cores: a falling loss and word-like Shakespeare. float32, because at this
    # width bf16 autocast measured 25% slower on an AVX512-BF16 CPU for the same loss curve
    # (benchmarks/RESULTS.md, "demo: bf16 against float32").
    "demo": dict(
        dtype="float32",
        n_layer=4, n_head=4, n_embd=128, seq_len=128, batch_size=16, total_batch_tokens=0, lr=3e-3,
        warmup_steps=30, max_steps=300, eval_interval=50, eval_batches=8, ckpt_interval=100,
        sample_prompt="\nKing.\n", num_samples=2, sample_tokens=80, weight_decay=0.1,
    ),
    # The demo's shape, data, batch and steps with the modern recipe (the architecture ARCHS["modern"],
    # Muon for the blocks' matrices, warmup-stable-decay): about as long on 2 CPU cores, a lower val
    # loss sooner (benchmarks/RESULTS.md, "Two recipes").
    "modern-demo": dict(
        dtype="float32", arch="modern", optimizer="muon", schedule="wsd",
        n_layer=4, n_head=4, n_embd=128, seq_len=128, batch_size=16, total_batch_tokens=0, lr=3e-3,
        warmup_steps=30, max_steps=300, eval_interval=50, eval_batches=8, ckpt_interval=100,
        sample_prompt="\nKing.\n", num_samples=2, sample_tokens=80, weight_decay=0.1,
    ),
    # Seconds: for tests and for trying flags. float32: bit-for-bit repeatable on a CPU (bf16 autocast
    # on a CPU is not always: oneDNN may pick a different bf16 kernel in another process).
    "tiny": dict(
        dtype="float32",
        n_layer=2, n_head=2, n_embd=32, seq_len=32, batch_size=4, total_batch_tokens=0, lr=1e-3,
        warmup_steps=2, max_steps=20, eval_interval=10, eval_batches=2, ckpt_interval=10,
        num_samples=1, sample_tokens=8,
    ),
    # build-nanogpt's GPT-2 124M recipe on FineWeb-Edu: 10B tokens in 19,073 steps of 2^19 tokens.
    "gpt2-124m": dict(hellaswag_interval=250, ckpt_interval=1000),
    # GPT-2 124M's shape with the modern recipe, after modded-nanogpt and nanochat (README of each):
    # rotary, QK-norm, ReLU^2, untied head, zero-init projections, soft-capped logits, Muon for the
    # blocks' matrices; warmup-stable-decay over 5,000 steps of 2^19 tokens (2.6B tokens: modded-nanogpt
    # reaches GPT-2's loss in far fewer with tricks not taken here). Not yet measured on a GPU.
    "modern-124m": dict(arch="modern", optimizer="muon", schedule="wsd", decay_frac=0.3, lr=1.8e-3,
                        warmup_steps=250, max_steps=5_000, hellaswag_interval=250, ckpt_interval=1000),
    "gpt2-350m": _gpt3(24, 16, 1024, 3.0e-4, 524_288, 32),
    "gpt2-774m": _gpt3(36, 20, 1280, 2.5e-4, 524_288, 16),
    "gpt2-1558m": _gpt3(48, 25, 1600, 2.0e-4, 1_048_576, 8),
}


def _parse_value(name: str, text: str, kind) -> object:
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--{name} {text!r}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"--{name} {text!r}: expected {kind.__name__}") from None


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        out[f.name] = kind
    return out


def parse_overrides(args: list[str]) -> dict[str, object]:
    """`--max-steps 20`, `--max_steps=20` and `--compile` (a bare bool flag) all work."""
    kinds = _field_types()
    out: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}; settings are given as --key value")
        key, eq, value = arg[2:].partition("=")
        name = key.replace("-", "_")
        if name not in kinds:
            valid = ", ".join(f"--{k.replace('_', '-')}" for k in kinds)
            raise UserError(f"unknown setting --{key}; valid settings: {valid}")
        if not eq:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if (kinds[name] is bool or name == "compile") and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif nxt is None:
                raise UserError(f"--{key} needs a value")
            else:
                value = nxt
                i += 1
        out[name] = _parse_value(key, value, kinds[name])
        i += 1
    return out


def resolve_config(preset: str, overrides: dict[str, object] | None = None) -> TrainConfig:
    """The preset, then its architecture's option set (--arch may choose another), then the overrides."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    overrides = overrides or {}
    arch = overrides.get("arch", PRESETS[preset].get("arch", "gpt2"))
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r}: expected one of {', '.join(ARCHS)}")
    values = {**ARCHS[arch], **PRESETS[preset], **overrides, "arch": arch, "preset": preset}
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def config_from_dict(d: dict) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - names
    if unknown:
        raise UserError(f"saved config has unknown settings {sorted(unknown)}; written by another version?")
    if isinstance(d.get("shuffle"), bool):  # saved before --shuffle had modes: True was shard order only
        d = {**d, "shuffle": shuffle_mode(d["shuffle"])}
    return TrainConfig(**d)


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
CUDAGRAPH_MODES = ("max-autotune", "reduce-overhead")  # the modes that capture CUDA graphs


def validate(cfg: TrainConfig) -> None:
    cfg.model_config().validate()
    for name in ("batch_size", "seq_len", "max_steps"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a positive integer")
    if cfg.block_size and cfg.block_size < cfg.seq_len:
        raise UserError(f"--seq-len {cfg.seq_len} is longer than --block-size {cfg.block_size}")
    if cfg.dtype not in ("auto", "float32", "bf16"):
        raise UserError(f"--dtype {cfg.dtype!r}: expected auto, float32 or bf16")
    if cfg.loss_impl not in ("auto", "chunked", "full"):
        raise UserError(f"--loss-impl {cfg.loss_impl!r}: expected auto, chunked or full")
    if cfg.compile not in ("auto", "true", "false"):
        raise UserError(f"--compile {cfg.compile!r}: expected auto, true or false")
    if cfg.attention not in ATTENTION_BACKENDS:
        raise UserError(f"--attention {cfg.attention!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    shuffle_mode(cfg.shuffle)
    for name, valid in (("optimizer", ("adamw", "muon")), ("schedule", ("cosine", "wsd")), ("arch", tuple(ARCHS))):
        if getattr(cfg, name) not in valid:
            raise UserError(f"--{name} {getattr(cfg, name)!r}: expected one of {', '.join(valid)}")
    if not 0.0 <= cfg.decay_frac <= 1.0 or not cfg.muon_lr >= 0 or not 0.0 <= cfg.muon_momentum < 1.0:
        raise UserError("--decay-frac must be within [0, 1], --muon-lr >= 0 and --muon-momentum within [0, 1)")
    if cfg.compile_mode not in COMPILE_MODES:
        raise UserError(f"--compile-mode {cfg.compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    if not (0.0 <= cfg.min_lr_ratio <= 1.0) or cfg.lr <= 0:
        raise UserError("--lr must be positive and --min-lr-ratio within [0, 1]")


def grad_accum_steps(cfg: TrainConfig, world_size: int) -> int:
    """Micro-steps per optimizer step so that every step sees exactly total_batch_tokens."""
    per_micro = cfg.batch_size * cfg.seq_len * world_size
    if cfg.total_batch_tokens == 0:
        return 1
    if cfg.total_batch_tokens % per_micro:
        raise UserError(
            f"--total-batch-tokens {cfg.total_batch_tokens} is not a multiple of batch_size * seq_len * "
            f"world_size = {cfg.batch_size} * {cfg.seq_len} * {world_size} = {per_micro}"
        )
    return cfg.total_batch_tokens // per_micro


__all__ = ["PRESETS", "TrainConfig", "grad_accum_steps", "parse_overrides", "resolve_config"]
