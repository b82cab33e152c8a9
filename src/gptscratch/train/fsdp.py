"""`--parallel fsdp`: FSDP2 shards the weights, gradients and optimizer state over the ranks; checkpoints
are sharded too (torch.distributed.checkpoint, DCP).

Under DDP every rank holds the whole model, its gradients and AdamW's two moments: about 16 bytes a
parameter, 25 GB for gpt2-1558m, more than a 24 GB card. `fully_shard` keeps 1/world of each on a rank
and all-gathers a block's weights just before its forward and backward (benchmarks/RESULTS.md, "FSDP").

- Each block is its own group, then the root: the root's group holds the embeddings, the final norm and
  the head, so a tied head (`lm_head.weight is wte.weight`) is one parameter in one group and stays tied.
- Mixed precision is FSDP's `MixedPrecisionPolicy`: with bf16 compute the weights are gathered and used in
  bf16 and the gradients reduced in float32, while the optimizer steps the float32 shards.
- Gradient accumulation reduce-scatters every micro-step and reshards after each forward and backward
  (FSDP's defaults), so weights and gradients stay sharded between micro-steps: that memory is why FSDP is
  chosen. Skipping the reduction until the last micro-step (`set_requires_gradient_sync(False)`, DDP's
  `no_sync`) or keeping weights gathered across micro-steps (`set_reshard_after_backward(False)`) saves
  communication but holds whole float32 gradients, or whole weights, on every rank: for gpt2-1558m on
  24 GB cards that is the memory that does not fit. Not measured on GPUs yet.
- Muon needs whole matrices: optim.ShardedMuon gathers each block matrix's update (bf16) for Newton-Schulz.
- A checkpoint: rank 0 makes the temporary directory, every rank writes its shards into `dcp/` of it, rank 0
  adds the RNG states and state.json and renames it into place (checkpoint.py's format otherwise). DCP
  reshards on load, so a run resumes at another world size; `checkpoint.load_model` consolidates it.
  Under many nodes the run directory must be on a filesystem every node sees.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from gptscratch.errors import UserError
from gptscratch.io import atomic_dir, writing
from gptscratch.model import GPT
from gptscratch.tokenizer import Tokenizer
from gptscratch.train import checkpoint as ckpt
from gptscratch.train.distributed import Dist, gather, on_master
from gptscratch.train.optim import restore_peak_lr


def shard(model: GPT, d: Dist, device: torch.device, amp: torch.dtype | None) -> None:
    """fully_shard each block, then the root, in place: the model's parameters become DTensor shards (so the
    optimizer is built after this). Every rank starts from rank 0's weights, as under DDP (each rank drew its
    own init from its own seed, and fully_shard keeps each rank's slice of its own)."""
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--parallel fsdp runs on CUDA or the CPU, not {device.type}; use --parallel ddp")
    if d.enabled:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t, src=0)
    mesh = init_device_mesh(device.type, (d.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp else MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """Clip to `max_norm` by the total norm over every rank's shards (clip_grad_norm_ on DTensors sums the
    shards' squares across ranks); the norm, as one number on every rank."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def weights_finite(model: torch.nn.Module, d: Dist) -> bool:
    """Every rank's shards finite (every rank answers the same)."""
    ok = bool(torch.stack([_local(p).isfinite().all() for p in model.parameters()]).all())
    return all(gather(ok, d))


def even_split(examples: list, world_size: int) -> list:
    """The first examples, as many as divide evenly over the ranks: under FSDP every rank must run the same
    number of forward passes (each all-gathers weights), so no rank may score one example more."""
    kept = examples[:len(examples) - len(examples) % world_size]
    if not kept:
        raise UserError(f"--parallel fsdp over {world_size} processes needs at least {world_size} HellaSwag "
                        f"examples, not {len(examples)}; raise --hellaswag-limit")
    return kept


def _optimizers(optimizer) -> list[torch.optim.Optimizer]:
    return getattr(optimizer, "optimizers", [optimizer])  # MuonAdamW is two


def save_checkpoint(ckpt_dir: Path, step: int, model: GPT, optimizer, config: dict, loader_states: list[dict],
                    rng_states: list[dict], keep: int, d: Dist, tokenizer: Tokenizer | None = None) -> Path | None:
    """Called on every rank: checkpoints/step_NNNNNN written as a whole, as checkpoint.save_checkpoint does;
    the path on rank 0, None elsewhere. A kill at any moment leaves the previous checkpoint whole."""
    final = ckpt_dir / f"step_{step:06d}"
    with contextlib.ExitStack() as stack:  # rank 0's atomic_dir, held open while every rank writes into it

        def begin() -> str:
            with writing(ckpt_dir):
                ckpt_dir.mkdir(parents=True, exist_ok=True)
            return str(stack.enter_context(atomic_dir(final)))

        tmp = Path(gather(on_master(d, begin), d)[0])
        model_state, optim_state = get_state_dict(model, _optimizers(optimizer))
        try:
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "dcp")
        except CheckpointException as e:  # a full disk on any rank fails the save on every rank
            raise UserError(f"cannot write {tmp / 'dcp'}: {_first_line(e)}") from None

        def finish() -> Path:
            ckpt.write_run_state(tmp, step, model.config, config, loader_states, rng_states, sharded=True,
                                 tokenizer=tokenizer)
            stack.close()  # the rename: only now does step_NNNNNN exist
            ckpt.prune(ckpt_dir, keep)
            return final

        return on_master(d, finish)


def load_checkpoint(saved: ckpt.Checkpoint, model: GPT, optimizer) -> None:
    """The weights and optimizer state of an FSDP checkpoint into this run's sharded model and optimizer,
    resharded by DCP to this run's world size, each param group keeping this run's `peak_lr`."""
    if not saved.sharded:
        raise UserError(f"{saved.path}: was saved by --parallel ddp; resume it with --parallel ddp")
    optimizers = _optimizers(optimizer)
    model_state, optim_state = get_state_dict(model, optimizers)
    try:
        dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=saved.path / "dcp")
    except CheckpointException as e:
        raise UserError(f"{saved.path / 'dcp'}: cannot be loaded ({_first_line(e)}); truncated, or another "
                        "model or optimizer") from None
    with restore_peak_lr(optimizer):
        set_state_dict(model, optimizers, model_state_dict=model_state, optim_state_dict=optim_state)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__
