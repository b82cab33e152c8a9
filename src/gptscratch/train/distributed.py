"""One process, or many under torchrun: which rank this is, and the few collectives the loop needs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from gptscratch.device import pick_device
from gptscratch.errors import UserError

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str, group_of_one: bool = False) -> tuple[Dist, torch.device]:
    """Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set): NCCL on CUDA, gloo on CPU; else one process.

    `group_of_one`: a single process still gets a process group (of one rank, through an in-memory store:
    no port, no torchrun), for FSDP, whose sharded parameters need one even when there is nothing to shard.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        device = pick_device(device_name)
        if group_of_one and not dist.is_initialized():
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
        return Dist(), device
    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return d, device


def shutdown(d: Dist) -> None:
    if dist.is_initialized():  # torchrun's group, or init_distributed's group of one
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / d.world_size
    return value


def gather(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not d.enabled:
        return [obj]
    out: list = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def on_master(d: Dist, work: Callable[[], T]) -> T | None:
    """`work()` on rank 0 (None elsewhere); its UserError is raised on every rank.

    Rank 0 alone touches the run directory (the lock, config.json, checkpoints). Were it to fail alone, the
    other ranks would wait at their next collective until a timeout; the gather here, which also keeps the
    ranks in step as a barrier would, tells them to stop with the same one-line error.
    """
    result, error = None, None
    if d.master:
        try:
            result = work()
        except UserError as e:
            error = str(e)
    error = gather(error, d)[0]
    if error is not None:
        raise UserError(error)
    return result
