"""One process, or many under torchrun: which rank this is, the few collectives the loop needs, and what a
survivor says when another rank's process ends under it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from gptscratch.device import pick_device
from gptscratch.errors import UserError

T = TypeVar("T")

PROCESS_KEY = "gptscratch/process/{rank}"  # in the group's store: "host pid" of each rank
# What a collective raises when the process at the other end has gone (gloo's words, then NCCL's)
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker crashing",
             "remote process exited", "communicator was aborted")


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
    _announce(d)
    return d, device


def _store():
    # the default group's store: torchrun's agent holds it, so it outlives any one worker (a private name, kept
    # since torch 1.x; without it, a survivor still names the rank that ended in a world of two)
    return dist.distributed_c10d._get_default_store()


def _announce(d: Dist) -> None:
    """Record where this rank runs, so that a survivor can tell which rank's process has ended (`lost_rank`)."""
    try:
        _store().set(PROCESS_KEY.format(rank=d.rank), f"{socket.gethostname()} {os.getpid()}")
    except Exception:  # a store without set (or none): the names fall back to what the world's size tells
        pass


def _running(pid: int) -> bool:
    if Path("/proc/self/stat").exists():  # Linux: a zombie, killed but not yet reaped, has ended too
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def ended_ranks(d: Dist) -> list[int]:
    """The other ranks on this machine whose process has ended (ranks elsewhere cannot be seen from here)."""
    try:
        store, host, ended = _store(), socket.gethostname(), []
        for rank in range(d.world_size):
            key = PROCESS_KEY.format(rank=rank)
            if rank != d.rank and store.check([key]):
                where, pid = store.get(key).decode().split()
                if where == host and not _running(int(pid)):
                    ended.append(rank)
        return ended
    except Exception:  # the store is gone too (its machine went down): nothing more can be told
        return []


def lost_rank(error: BaseException, d: Dist) -> UserError | None:
    """A collective that failed because another rank's process ended, as one line naming that rank; None for any
    other error, which keeps its traceback. A killed process closes its connections as it dies, so a survivor
    may look before it has quite ended: it looks again for a second."""
    if not d.enabled or not isinstance(error, RuntimeError):
        return None
    peer_lost = any(words in str(error) for words in PEER_LOST)
    ended = ended_ranks(d)
    for _ in range(10 if peer_lost else 0):
        if ended:
            break
        time.sleep(0.1)
        ended = ended_ranks(d)
    if not ended and not peer_lost:
        return None
    if not ended and d.world_size == 2:
        ended = [1 - d.rank]
    who = (f"rank {ended[0]}" if len(ended) == 1 else f"ranks {', '.join(map(str, ended))}" if ended
           else "another rank")
    return UserError(f"{who} of {d.world_size} ended (killed, or crashed: see its own output) while rank {d.rank} "
                     "was exchanging data with it, so this rank stops too; continue from the last checkpoint with "
                     "--resume")


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
