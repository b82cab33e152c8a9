"""The training config: one dataclass whose fields carry their own help, named presets, and the `train`
command line generated from them.

Each setting is declared once, as a field: its type gives the parser its type (a `Literal` gives the
choices, a bool `--x/--no-x`), its metadata the help text `gptscratch train --help` prints. A config is
checked once, when it is made (`__post_init__`): from a preset, from a saved checkpoint's dict, or by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import operator
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gptscratch.chat import CHAT_VOCAB_SIZE
from gptscratch.data.loader import shuffle_mode
from gptscratch.device import Attention
from gptscratch.errors import UserError
from gptscratch.model import GPTConfig, Mlp, Norm, PosEmbedding
from gptscratch.paths import DEFAULT_DATA
from gptscratch.precision import DTYPE_HELP, Dtype
from gptscratch.tokenizer import VOCAB_SIZE

CompileMode = Literal["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]
COMPILE_MODES: tuple[str, ...] = typing.get_args(CompileMode)
CUDAGRAPH_MODES = ("max-autotune", "reduce-overhead")  # the modes that capture CUDA graphs


def setting(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its help text; `bare=VALUE` lets the flag be given without a value."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    preset: str = setting("demo", "the named config these settings start from")
    # where things are
    data: str = setting(DEFAULT_DATA, "directory of token shards made by `gptscratch prepare` (the default is "
                        "prepared from Shakespeare on first use)")
    out: str = setting("", "run directory; empty: runs/<preset>")
    overwrite: bool = setting(False, "a new run may replace the run already in --out (its config, metrics and "
                              "checkpoints); without it such a run is refused. A resumed run never inherits it")
    init_from: str = setting("", "start from these weights, not random ones: a Hugging Face directory or hub id "
                             "(GPT-2, or a Qwen3/Llama model gptscratch exported) or a gptscratch checkpoint; "
                             "the model's shape comes from it")
    chat: bool = setting(False, "train a chat model on conversations (--data from `gptscratch prepare --chat`): the "
                         "loss and the val loss are the mean over the tokens the assistant writes, and the vocabulary "
                         "takes the four chat tokens into rows the padding already holds (from --init-from, each "
                         "starts as a typical token of it: its embeddings' mean plus noise of their spread)")
    # model
    n_layer: int = setting(12, "transformer blocks", min=1)
    n_head: int = setting(12, "attention heads per block", min=1)
    n_embd: int = setting(768, "width of the residual stream", min=1)
    block_size: int = setting(0, "longest context the model can take; 0: the same as --seq-len", min=0)
    vocab_multiple: int = setting(64, "pad the vocabulary to a multiple of this (64 gives 50304): faster matmuls; "
                                  "the padded rows are never sampled", min=1)
    dropout: float = setting(0.0, "dropout probability", min=0, below=1)
    bias: bool = setting(True, "biases in the linear layers and LayerNorms, as GPT-2 has")
    # the architecture: a set of the options below (ARCHS); each option given overrides its piece of the set
    arch: Literal["gpt2", "modern"] = setting(
        "gpt2", "gpt2: exactly GPT-2; modern: rope, parameter-free rmsnorm, qk-norm, swiglu, an untied head, "
        "zero-init projections and no biases, which exports as Qwen3 (the options below override single pieces)")
    pos_embedding: PosEmbedding = setting(
        "learned", "learned: a position table (GPT-2); rope: rotary, relative positions")
    rope_base: float = setting(10000.0, "rope's frequency base: channel pair i turns base^(-2i/head_dim) radians a "
                               "position", above=1)
    norm: Norm = setting("layernorm", "layernorm (GPT-2), or rmsnorm: no mean "
                                                    "subtraction, no bias")
    norm_weight: bool = setting(True, "rmsnorm with a learned gain (false: parameter-free)")
    qk_norm: bool = setting(False, "RMSNorm of each head's q and k: bounded attention logits, a higher stable lr")
    mlp: Mlp = setting(
        "gelu", "gelu (GPT-2), relu2 (ReLU squared) or swiglu (gated SiLU: three matrices, 2/3 as wide)")
    tie_embeddings: bool = setting(True, "the LM head is the token embedding (GPT-2)")
    logit_softcap: float = setting(0.0, "> 0: logits = cap * tanh(logits / cap); 0: off", min=0)
    zero_init_proj: bool = setting(False, "output projections (and an untied head) start at zero")
    # batch: total_batch_tokens = batch_size * seq_len * world_size * grad_accum_steps
    batch_size: int = setting(64, "micro-batch per process, in sequences", min=1)
    seq_len: int = setting(1024, "tokens per training sequence", min=1)
    total_batch_tokens: int = setting(524_288, "tokens per optimizer step, over all processes and accumulation "
                                      "micro-steps; 0: one micro-batch per process, no accumulation", min=0)
    # optimisation
    lr: float = setting(6e-4, "peak learning rate", above=0)
    min_lr_ratio: float = setting(0.1, "the cosine schedule decays to lr * min-lr-ratio", min=0, max=1)
    warmup_steps: int = setting(715, "steps of linear warmup to the peak learning rate", min=0)
    max_steps: int = setting(19_073, "optimizer steps of the whole run", min=1)
    weight_decay: float = setting(0.1, "AdamW weight decay, on the 2-D weights only", min=0)
    beta1: float = setting(0.9, "AdamW beta1", min=0, below=1)
    beta2: float = setting(0.95, "AdamW beta2", min=0, below=1)
    eps: float = setting(1e-8, "AdamW epsilon", above=0)
    grad_clip: float = setting(1.0, "clip the gradient norm to this; 0: no clipping (the norm is still logged)",
                               min=0)
    optimizer: Literal["adamw", "muon"] = setting(
        "adamw", "adamw: AdamW for everything (GPT-2); muon: Muon for the blocks' 2-D matrices, AdamW for the rest")
    muon_lr: float = setting(0.0, "Muon's peak lr (scaled to match AdamW's update RMS); 0: the same as --lr",
                             min=0)
    muon_momentum: float = setting(0.95, "Muon's momentum", min=0, below=1)
    schedule: Literal["cosine", "wsd"] = setting(
        "cosine", "cosine: warmup, then cosine decay; wsd: warmup, constant, then linear decay")
    decay_frac: float = setting(0.2, "wsd: the final fraction of --max-steps that decays to the minimum lr",
                                min=0, max=1)
    # evaluation and logging
    eval_interval: int = setting(250, "val loss every this many steps (and at the last); 0: never", min=0)
    eval_batches: int = setting(20, "batches of val rows per val loss: the same rows every time, drawn from the "
                                "whole split", min=1)
    hellaswag_interval: int = setting(0, "HellaSwag accuracy every this many steps; 0: never", min=0)
    hellaswag_file: str = setting("", "a HellaSwag .jsonl; empty: download the official val set into the cache")
    hellaswag_limit: int = setting(0, "score only the first N HellaSwag examples; 0: every one", min=0)
    core_interval: int = setting(0, "CORE (the DCLM paper's 22 in-context tasks, as nanochat scores them) every this "
                                 "many steps; 0: never", min=0)
    core_max_per_task: int = setting(500, "examples per CORE task in training (nanochat's 500)", min=1)
    core_bundle: str = setting("", "an unpacked CORE eval bundle; empty: download nanochat's into the cache")
    sample_interval: int = setting(0, "print samples every this many steps; 0: only at the end", min=0)
    num_samples: int = setting(2, "samples printed each time; 0: none", min=0)
    sample_tokens: int = setting(64, "tokens per sample", min=1)
    sample_prompt: str = setting("<|endoftext|>", "text the samples continue")
    log_interval: int = setting(1, "write a metrics.jsonl line every this many steps", min=1)
    # checkpoints
    ckpt_interval: int = setting(1000, "save a checkpoint every this many steps (and at the last); 0: only at "
                                 "the end", min=0)
    keep: int = setting(3, "newest checkpoints kept; 0 keeps all", min=0)
    # runtime
    seed: int = setting(1337, "seed of the weights' init, the data order and the samples", min=0, below=2**63)
    device: str = setting("auto", "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps")
    dtype: Dtype = setting("auto", DTYPE_HELP)
    compile: Literal["auto", "true", "false"] = setting(
        "auto", "torch.compile the model: auto is on for CUDA, off elsewhere; --compile alone means true", bare="true")
    compile_mode: CompileMode = setting(
        "default", "torch.compile's mode: max-autotune-no-cudagraphs searches matmul kernels (minutes more to "
        "compile); max-autotune and reduce-overhead add CUDA graphs (one process, no DDP)")
    attention: Attention = setting("auto", "the attention kernel for training: auto lets torch pick")
    parallel: Literal["ddp", "fsdp"] = setting(
        "ddp", "ddp: every process holds the whole model, optimizer state included (torchrun runs DDP); fsdp: "
        "FSDP2 shards weights, gradients and optimizer state over the processes (a model too big for one GPU's "
        "memory), and checkpoints are sharded too (torch.distributed.checkpoint); one process works too")
    # the loader's modes (data/loader.py SHUFFLE_MODES); a saved config's true/false maps to shards/none
    shuffle: Literal["rows", "shards", "none"] = setting(
        "rows", "training batch order: rows (each epoch, every seq_len row of the split once, in a seeded random "
        "order), shards (llm.c's stream: consecutive windows, shard order reshuffled each epoch) or none "
        "(consecutive, in order)")
    loss_impl: Literal["auto", "chunked", "full"] = setting(
        "auto", "chunked: the LM head + cross-entropy a chunk of rows at a time, never holding the full logits "
        "(faster on CPUs); full: the whole logits, which inductor fuses (2% faster compiled on an H100); "
        "auto: chunked except on CUDA")

    def __post_init__(self) -> None:
        validate(self)

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        """The model these settings describe, for a tokenizer of `vocab_size` ids (the data's: train passes it);
        without it, GPT-2's (with the chat tokens under --chat)."""
        return GPTConfig(
            block_size=self.block_size or self.seq_len,
            vocab_size=vocab_size or (CHAT_VOCAB_SIZE if self.chat else VOCAB_SIZE),
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


# The model's options beyond GPT-2: GPTConfig's fields after vocab_multiple, each a setting of the same name.
_MODEL_FIELDS = [f.name for f in dataclasses.fields(GPTConfig)]
MODEL_OPTIONS = tuple(_MODEL_FIELDS[_MODEL_FIELDS.index("vocab_multiple") + 1:])
ARCHS: dict[str, dict] = {
    "gpt2": {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in (*MODEL_OPTIONS, "bias")},
    # chosen by the ablation in benchmarks/RESULTS.md ("Two recipes"): SwiGLU without the soft-cap trained a
    # lower val loss there than ReLU^2 with it, and is the set transformers' Qwen3ForCausalLM holds exactly,
    # so a modern model exports (`gptscratch export`) like a GPT-2 one
    "modern": dict(bias=False, pos_embedding="rope", norm="rmsnorm", norm_weight=False, qk_norm=True, mlp="swiglu",
                   tie_embeddings=False, logit_softcap=0.0, zero_init_proj=True),
}
# The first setting of each group in `gptscratch train --help`.
SECTIONS = {"preset": "preset", "data": "where things are", "n_layer": "model", "arch": "architecture beyond GPT-2",
            "batch_size": "batch", "lr": "optimisation", "eval_interval": "evaluation and logging",
            "ckpt_interval": "checkpoints", "seed": "runtime"}


def _gpt3(n_layer: int, n_head: int, n_embd: int, lr: float, total: int, micro: int) -> dict:
    """A GPT-2 size trained for 10B tokens with the GPT-3 paper's batch and learning rate (Table 2.1)."""
    steps = 10_000_000_000 // total
    return dict(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, lr=lr, total_batch_tokens=total, batch_size=micro,
        max_steps=steps, warmup_steps=375_000_000 // total, hellaswag_interval=250,
    )


# About 5 minutes on 2 CPU cores: a falling loss and word-like Shakespeare. float32, because at this
# width bf16 autocast measured 25% slower on an AVX512-BF16 CPU for the same loss curve
# (benchmarks/RESULTS.md, "demo: bf16 against float32").
_DEMO = dict(
    dtype="float32",
    n_layer=4, n_head=4, n_embd=128, seq_len=128, batch_size=16, total_batch_tokens=0, lr=3e-3,
    warmup_steps=30, max_steps=300, eval_interval=50, eval_batches=8, ckpt_interval=100,
    sample_prompt="\nKing.\n", num_samples=2, sample_tokens=80, weight_decay=0.1,
)

PRESETS: dict[str, dict] = {
    "demo": _DEMO,
    # The demo's shape, data, batch and steps with the modern recipe (the architecture ARCHS["modern"], Muon
    # for the blocks' matrices, warmup-stable-decay): about as long on 2 CPU cores, a lower val loss sooner
    # (benchmarks/RESULTS.md, "Two recipes").
    "modern-demo": {**_DEMO, "arch": "modern", "optimizer": "muon", "schedule": "wsd"},
    # Seconds: for tests and for trying flags. float32: bit-for-bit repeatable on a CPU (bf16 autocast
    # on a CPU is not always: oneDNN may pick a different bf16 kernel in another process).
    "tiny": dict(
        dtype="float32",
        n_layer=2, n_head=2, n_embd=32, seq_len=32, batch_size=4, total_batch_tokens=0, lr=1e-3,
        warmup_steps=2, max_steps=20, eval_interval=10, eval_batches=2, ckpt_interval=10,
        num_samples=1, sample_tokens=8,
    ),
    # Fine-tuning a pretrained model (--init-from, which also sets the model's shape) on a small corpus: a
    # short warmup, dropout, few steps and frequent val, and lr 2e-4, a third of GPT-2 124M's pretraining lr:
    # in the sweep in benchmarks/RESULTS.md ("Fine-tuning") a third of the source's pretraining lr was the
    # best of 1/100, 1/30, 1/10 and 1/3. bf16 where the device has it, as pretraining.
    "finetune": dict(
        seq_len=256, batch_size=8, total_batch_tokens=0, lr=2e-4, min_lr_ratio=0.1, warmup_steps=20,
        max_steps=200, dropout=0.1, weight_decay=0.1, eval_interval=20, eval_batches=8, ckpt_interval=100,
        num_samples=2, sample_tokens=64, sample_prompt="\n",
    ),
    # Supervised fine-tuning into a chat model: the finetune preset's recipe on conversations, the loss on the
    # assistant's tokens only. Samples of raw text say little of a chat model: `gptscratch chat` talks to it.
    "sft": dict(
        chat=True, seq_len=512, batch_size=8, total_batch_tokens=0, lr=2e-4, min_lr_ratio=0.1, warmup_steps=20,
        max_steps=500, dropout=0.1, weight_decay=0.1, eval_interval=50, eval_batches=8, ckpt_interval=100,
        num_samples=0,
    ),
    # build-nanogpt's GPT-2 124M recipe on FineWeb-Edu: 10B tokens in 19,073 steps of 2^19 tokens.
    "gpt2-124m": dict(hellaswag_interval=250, ckpt_interval=1000),
    # GPT-2 124M's shape with the modern recipe, after modded-nanogpt and nanochat (README of each):
    # rotary, QK-norm, an untied head, zero-init projections, Muon for the blocks' matrices (their ReLU^2 and
    # soft-cap gave way here to SwiGLU, which measured better on our data and exports); warmup-stable-decay
    # over 5,000 steps of 2^19 tokens (2.6B tokens: modded-nanogpt reaches GPT-2's loss in far fewer with
    # tricks not taken here). Not yet measured on a GPU.
    "modern-124m": dict(arch="modern", optimizer="muon", schedule="wsd", decay_frac=0.3, lr=1.8e-3,
                        warmup_steps=250, max_steps=5_000, hellaswag_interval=250, ckpt_interval=1000),
    "gpt2-350m": _gpt3(24, 16, 1024, 3.0e-4, 524_288, 32),
    "gpt2-774m": _gpt3(36, 20, 1280, 2.5e-4, 524_288, 16),
    "gpt2-1558m": _gpt3(48, 25, 1600, 2.0e-4, 1_048_576, 8),
}


@functools.cache
def _types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(cfg: TrainConfig) -> None:
    """Every check of a config's values, in one place; a bad value is a one-line UserError naming its flag.

    A field's type is checked first (a config may come from a hand-edited or damaged config.json), then a
    number's range: the bounds are in the field's metadata (`min`, `above`, `max`, `below`), and a float
    must be finite, so `--lr nan` and `--dropout inf` are refused here like `--dropout 2`.
    """
    for f in dataclasses.fields(cfg):
        kind, value = _types()[f.name], getattr(cfg, f.name)
        if typing.get_origin(kind) is Literal:
            if value not in typing.get_args(kind):
                raise UserError(f"{_flag(f.name)} {value!r}: expected one of {', '.join(typing.get_args(kind))}")
            continue
        if not _has_type(value, kind):
            raise UserError(f"{_flag(f.name)} {value!r}: expected {_TYPE_NAMES[kind]}")
        if kind in (int, float):
            bounds = _bounds(f.metadata)
            if not (math.isfinite(value) and all(ok(value) for _, ok in bounds)):
                expected = " and ".join(text for text, _ in bounds)
                noun = "a finite number" if kind is float else "an integer"
                raise UserError(f"{_flag(f.name)} {value}: expected {noun} {expected}")
    cfg.model_config().validate()
    if cfg.parallel == "fsdp" and cfg.compile_mode in CUDAGRAPH_MODES:
        raise UserError(f"--compile-mode {cfg.compile_mode} captures CUDA graphs, which this trainer does not "
                        "combine with --parallel fsdp: use default or max-autotune-no-cudagraphs")
    if cfg.core_interval and cfg.parallel == "fsdp":
        raise UserError("--core-interval with --parallel fsdp: CORE's scorer reads whole weights, not shards; "
                        "score a checkpoint with `gptscratch eval core` instead")
    if cfg.block_size and cfg.block_size < cfg.seq_len:
        raise UserError(f"--seq-len {cfg.seq_len} is longer than --block-size {cfg.block_size}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _has_type(value: Any, kind: type) -> bool:
    if kind is float:  # an int is a float here (JSON writes 1.0 as 1 in some hands)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _bounds(meta: Any) -> list[tuple[str, Callable[[float], bool]]]:
    """A field's range from its metadata, as (text for the message, test) pairs."""
    tests = {"min": (">=", operator.ge), "above": (">", operator.gt), "max": ("<=", operator.le),
             "below": ("<", operator.lt)}
    return [(f"{sign} {meta[key]}", lambda v, op=op, bound=meta[key]: op(v, bound))
            for key, (sign, op) in tests.items() if key in meta]


def resolve_config(preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The preset, then its architecture's option set (--arch may choose another), then the overrides."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    overrides = overrides or {}
    arch = overrides.get("arch", PRESETS[preset].get("arch", "gpt2"))
    if arch not in ARCHS:
        raise UserError(f"--arch {arch!r}: expected one of {', '.join(ARCHS)}")
    return TrainConfig(**{**ARCHS[arch], **PRESETS[preset], **overrides, "arch": arch, "preset": preset})


def config_from_dict(d: dict) -> TrainConfig:
    """A config saved with a run (config.json, a checkpoint's state.json)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(d) - names
    if unknown:
        raise UserError(f"saved config has unknown settings {sorted(unknown)}; written by another version?")
    if isinstance(d.get("shuffle"), bool):  # saved before --shuffle had modes: True was shard order only
        d = {**d, "shuffle": shuffle_mode(d["shuffle"])}
    return TrainConfig(**d)


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


# --- the command line ----------------------------------------------------------------------------


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class BoolFlag(argparse.Action):
    """`--x` and `--no-x`, and, as before argparse, `--x true|false` (or `--x=false`)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        negated = ["--no-" + s[2:] for s in option_strings]
        super().__init__([*option_strings, *negated], dest, nargs="?", type=parse_bool, metavar="true|false",
                         **kwargs)

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        if option_string.startswith("--no-"):
            if value is not None:
                raise argparse.ArgumentError(self, f"{option_string} takes no value")
            value = False
        setattr(namespace, self.dest, True if value is None else value)


def _shown(default: Any) -> str:
    return repr(default) if default == "" else str(default)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. A flag not given stays out of the namespace, so that the preset, or a
    resumed run's saved config, supplies it (see `given_settings`)."""
    group = parser
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS:
            group = parser.add_argument_group(SECTIONS[f.name])
        kind = _types()[f.name]
        help_text = f"{f.metadata['help']} (default {_shown(f.default)})".replace("%", "%%")  # argparse formats %
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            group.add_argument(_flag(f.name), action=BoolFlag, **kw)
            continue
        if f.name == "preset":
            kw.update(choices=list(PRESETS))
        elif typing.get_origin(kind) is Literal:
            kw.update(choices=typing.get_args(kind))
        else:
            kw.update(type=kind, metavar=kind.__name__.upper())
        if "bare" in f.metadata:
            kw.update(nargs="?", const=f.metadata["bare"])
        group.add_argument(_flag(f.name), **kw)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, by field name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}


def setting_flags() -> list[str]:
    return [_flag(f.name) for f in dataclasses.fields(TrainConfig)]


__all__ = ["PRESETS", "TrainConfig", "add_config_arguments", "given_settings", "grad_accum_steps", "resolve_config"]
