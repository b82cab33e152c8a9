"""Checkpoints that survive a kill at any moment, and resume a run exactly.

A checkpoint is a directory `checkpoints/step_000100/` holding:
- `model.safetensors`: the weights (the tied LM head stored once, as `transformer.wte.weight`);
- `optimizer.pt`: AdamW's state, loaded with `weights_only=True`;
- `state.json`: step, the run's config, the model shape, its tokenizer, every rank's loader position and RNG
  states;
- `tokenizer/`: a copy of the tokenizer the run's data was prepared with, when it is not GPT-2's (tokenizer.py).
A run with `--parallel fsdp` writes `dcp/` (torch.distributed.checkpoint: each rank's shards of the weights
and of the optimizer state, `"weights": "dcp"` in state.json) instead of the first two; `load_model`
consolidates it into a whole model, so `sample`, `eval` and `export` read either kind (fsdp.py writes it).
It is written under a temporary name and renamed into place (io.atomic_dir), so a reader sees a complete
checkpoint or none; the previous one stays until the new one is complete. A full disk ends the write with a
one-line error and removes the partial directory; a killed writer's `.tmp-step_*` is swept by the next run
that takes the directory's lock (train/rundir.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gptscratch import testing
from gptscratch.errors import UserError
from gptscratch.io import atomic_dir, read_safetensors, save_safetensors, writing
from gptscratch.model import GPT, GPTConfig
from gptscratch.tokenizer import Tokenizer, gpt2, tokenizer_of

FORMAT = "gptscratch-checkpoint-1"


def rng_state() -> dict:
    """This process's random states, as types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    path: Path
    step: int
    config: dict  # the run's TrainConfig as a dict
    model_config: GPTConfig
    loader_states: list[dict]  # one per rank
    world_size: int
    sharded: bool = False  # written by --parallel fsdp: weights and optimizer state in dcp/
    tokenizer: Tokenizer = dataclasses.field(default_factory=gpt2)

    def load_model(self) -> GPT:
        model = GPT(self.model_config)
        if self.sharded:
            load_sharded_weights(model, self.path / "dcp")
        else:
            load_weights(model, self.path / "model.safetensors")
        return model

    def optimizer_state(self) -> dict:
        path = self.path / "optimizer.pt"
        if self.sharded:
            raise UserError(f"{self.path}: was saved by --parallel fsdp (sharded); resume it with --parallel fsdp")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(
                f"{path}: cannot be loaded ({type(e).__name__}); truncated or not a gptscratch checkpoint"
            ) from None

    def rng_state(self, rank: int) -> dict:
        path = self.path / f"rng_rank{rank}.pt"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{path}: cannot be loaded ({type(e).__name__})") from None


def load_weights(model: GPT, path: Path) -> None:
    sd = read_safetensors(path)
    expected = stored_weights(model)
    if set(sd) != set(expected):
        raise UserError(f"{path}: its weights are not those of a gptscratch GPT of this shape")
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise UserError(
                f"{path}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}"
            )
    if model.config.tie_embeddings:
        sd = {**sd, "lm_head.weight": sd["transformer.wte.weight"]}
    model.load_state_dict(sd)


def load_sharded_weights(model: GPT, path: Path) -> None:
    """The whole weights of an FSDP checkpoint's `dcp/` into a plain model, in this process alone (no process
    group is needed, and one that exists is not used): DCP gathers every rank's shards from the files."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException

    state = model.state_dict()
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"model": state}, checkpoint_id=path, no_dist=True)
    except (CheckpointException, RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot be read as the sharded weights of this model ({first}); truncated, or "
                        "not written by gptscratch --parallel fsdp") from None
    model.load_state_dict(state)


def stored_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict as a checkpoint stores it: a tied LM head once, as `transformer.wte.weight`."""
    tied = model.config.tie_embeddings
    return {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    config: dict,
    loader_states: list[dict],
    rng_states: list[dict],
    keep: int = 0,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write checkpoints/step_NNNNNN as a whole (io.atomic_dir), then drop all but the newest `keep`."""
    ckpt_dir = Path(ckpt_dir)
    with writing(ckpt_dir):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:06d}"
    with atomic_dir(final) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in stored_weights(model).items()}
        save_safetensors(weights, tmp / "model.safetensors", metadata={"format": FORMAT})
        # through Python file objects, so that a full disk raises an OSError (torch's own writer raises
        # a RuntimeError that says nothing of the disk)
        with open(tmp / "optimizer.pt", "wb") as f:
            torch.save(optimizer.state_dict(), f)
        write_run_state(tmp, step, model.config, config, loader_states, rng_states, tokenizer=tokenizer)
    prune(ckpt_dir, keep)
    return final


def write_run_state(tmp: Path, step: int, model_config: GPTConfig, config: dict, loader_states: list[dict],
                    rng_states: list[dict], sharded: bool = False, tokenizer: Tokenizer | None = None) -> None:
    """Every rank's RNG states and the tokenizer, then state.json, into a checkpoint being written (its weights
    already there)."""
    tokenizer = tokenizer or gpt2()
    tokenizer.copy_into(tmp)
    for rank, state in enumerate(rng_states):
        with open(tmp / f"rng_rank{rank}.pt", "wb") as f:
            torch.save(state, f)
    testing.halt("checkpoint", step)  # tests kill a write in progress here
    state = {
        "format": FORMAT,
        "step": step,
        "world_size": len(loader_states),
        "model_config": asdict(model_config),
        "tokenizer": tokenizer.record(),
        "config": config,
        "loader_states": loader_states,
        **({"weights": "dcp"} if sharded else {}),
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def prune(ckpt_dir: Path, keep: int) -> None:
    """Drop all but the newest `keep` checkpoints (0: keep all)."""
    if keep > 0:
        for old in list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def step_of(path: Path) -> int:
    """The step of a checkpoint directory `step_NNNNNN`."""
    return int(path.name.removeprefix("step_"))


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted writes are skipped)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.glob("step_*")
             if p.name[5:].isdigit() and p.is_dir() and (p / "state.json").exists()]
    return sorted(found, key=step_of)


def run_dir_of(step_dir: Path) -> Path | None:
    """The run directory holding a checkpoint (RUN/checkpoints/step_N), or None for one outside a run's."""
    step_dir = Path(step_dir)
    return step_dir.parent.parent if step_dir.parent.name == "checkpoints" else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A step directory from a step directory, a checkpoints/ directory or a run directory."""
    path = Path(path)
    if (path / "state.json").exists():
        return path
    for candidate in (path, path / "checkpoints"):
        found = list_checkpoints(candidate)
        if found:
            return found[-1]
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint or run directory")
    raise UserError(f"{path}: holds no complete gptscratch checkpoint (expected step_*/state.json)")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    step_dir = find_checkpoint(path)
    state_path = step_dir / "state.json"
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{state_path}: not valid JSON ({e}); truncated checkpoint?") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{state_path}: not a {FORMAT} file")
    try:
        model_config = GPTConfig(**state["model_config"])
        model_config.validate()
        saved = Checkpoint(path=step_dir, step=state["step"], config=state["config"], model_config=model_config,
                           loader_states=state["loader_states"], world_size=state["world_size"],
                           sharded=state.get("weights", "safetensors") == "dcp")
    except (KeyError, TypeError) as e:
        raise UserError(f"{state_path}: missing or malformed field ({e})") from None
    except UserError as e:
        raise UserError(f"{state_path}: {e}") from None
    record = state.get("tokenizer")  # none in a checkpoint from before tokenizers of one's own: GPT-2's
    # every reader of checkpoints passes here: a vocabulary that cannot hold its tokenizer's ids is refused
    saved.tokenizer = tokenizer_of(step_dir, record if isinstance(record, dict) else None,
                                   vocab_size=model_config.vocab_size, where=str(state_path))
    # fields of the wrong type would fail far from here (a list as the step, a string as a loader state)
    fine = (isinstance(saved.step, int) and saved.step >= 0 and isinstance(saved.world_size, int)
            and saved.world_size >= 1 and isinstance(saved.config, dict) and isinstance(saved.loader_states, list)
            and len(saved.loader_states) == saved.world_size and all(isinstance(s, dict) for s in saved.loader_states))
    if not fine:
        raise UserError(f"{state_path}: step, world_size, config or loader_states has the wrong type or size; "
                        "damaged or not written by gptscratch")
    return saved


def load_model(path: str | os.PathLike) -> GPT:
    """The model of the newest checkpoint under `path` (for sampling, evaluation and export)."""
    return load_checkpoint(path).load_model()
