"""Memory per rank under DDP and under FSDP (`--parallel fsdp`), 2 CPU processes (gloo), a preset's model.

For each mode it runs `torchrun --nproc_per_node=N` on this file as a script (a worker that imports only torch
and gptscratch, so the other benchmarks' imports do not count in its memory), which trains STEPS steps of
AdamW on a tiny batch (1 x 64 tokens: the model's own memory is what is measured, not activations) and
reports, per rank, the bytes of the tensors each rank holds, counted from their local shards: parameters,
gradients (after the last backward) and optimizer state; and the process's peak resident memory (maxrss,
which also counts the whole model each rank builds before it is sharded, DDP's gradient buckets, and
torch itself). Not a speed benchmark: nothing is timed.

    OMP_NUM_THREADS=1 python -m benchmarks fsdp-memory --preset gpt2-124m --modes ddp,fsdp
    OMP_NUM_THREADS=1 python -m benchmarks fsdp-memory --preset gpt2-350m --modes fsdp
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

GIB = 2**30


def tensor_bytes(tensors) -> int:
    """Bytes of the local part of each distinct tensor (a DTensor's shard on this rank)."""
    from torch.distributed.tensor import DTensor

    seen, total = set(), 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        # by address, not id(): to_local() returns a new object each call, whose id a freed one may reuse
        key = (local.data_ptr(), local.numel())
        if key not in seen:
            seen.add(key)
            total += local.numel() * local.element_size()
    return total


def worker(preset: str, mode: str, steps: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gptscratch.model import GPT
    from gptscratch.train import fsdp
    from gptscratch.train.config import resolve_config
    from gptscratch.train.distributed import Dist, gather
    from gptscratch.train.optim import build_optimizer

    dist.init_process_group("gloo")
    d = Dist(dist.get_rank(), dist.get_rank(), dist.get_world_size())
    cfg = resolve_config(preset, {"seq_len": 64, "batch_size": 1, "total_batch_tokens": 0, "dtype": "float32",
                                  "parallel": mode, "device": "cpu"})
    torch.manual_seed(cfg.seed + d.rank)
    raw = GPT(cfg.model_config())
    model: torch.nn.Module = raw
    if mode == "fsdp":
        fsdp.shard(raw, d, torch.device("cpu"), None)
    else:
        model = DDP(raw)
    optimizer = build_optimizer(raw, cfg, "cpu")
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x = torch.randint(0, 50257, (1, 65), generator=g)
        _, loss = model(x[:, :-1], x[:, 1:], return_logits=False)
        loss.backward()
        fsdp.clip_grad_norm(raw, 1.0)
        optimizer.step()
    params = list(raw.parameters())
    states = [v for opt in getattr(optimizer, "optimizers", [optimizer]) for s in opt.state.values()
              for v in s.values() if isinstance(v, torch.Tensor)]
    row = {"rank": d.rank, "params": tensor_bytes(params), "grads": tensor_bytes(p.grad for p in params),
           "optimizer": tensor_bytes(states), "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    rows = gather(row, d)
    if d.master:
        n = sum(p.numel() for p in params)
        print("FSDP_MEMORY " + json.dumps({"preset": preset, "mode": mode, "world_size": d.world_size,
                                           "num_params": n, "ranks": rows}), flush=True)
    # DDP's reducer must go before its process group: destroyed after it, it hung now and then under gloo
    del model, raw, optimizer, params, states
    # Once in a CI run, rank 0 aborted after its figures were printed ("terminate called without an active
    # exception": a C++ thread torn down at exit, no Python traceback), and torchrun failed the run. A barrier
    # keeps either rank from tearing down while the other is still in a collective, and os._exit skips the
    # interpreter's exit-time C++ destructors. The figures are printed and flushed, and the OS frees the rest.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_mode(preset: str, mode: str, steps: int, nproc: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                        __file__, "--worker", "--preset", preset, "--modes", mode, "--steps", str(steps)],
                       env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in p.stdout.splitlines() if line.startswith("FSDP_MEMORY ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"{mode}: torchrun exited {p.returncode}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("FSDP_MEMORY "))


def table(results: list[dict]) -> str:
    out = ["| preset | mode | ranks | params / rank | grads / rank | optimizer / rank | sum / rank | "
           "bytes per parameter | peak RSS / rank |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        worst = max(r["ranks"], key=lambda x: x["params"] + x["grads"] + x["optimizer"])
        total = worst["params"] + worst["grads"] + worst["optimizer"]
        rss = max(x["maxrss"] for x in r["ranks"])
        out.append(f"| {r['preset']} | {r['mode']} | {r['world_size']} | {worst['params'] / GIB:.2f} GiB | "
                   f"{worst['grads'] / GIB:.2f} GiB | {worst['optimizer'] / GIB:.2f} GiB | {total / GIB:.2f} GiB | "
                   f"{total / r['num_params']:.2f} | {rss / GIB:.2f} GiB |")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    results = [run_mode(args.preset, mode, args.steps, args.nproc) for mode in args.modes.split(",")]
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("fsdp-memory", help="memory per rank under DDP and FSDP (2 CPU processes); nothing timed",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--modes", default="ddp,fsdp", help="comma-separated: ddp, fsdp")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(func=run)


if __name__ == "__main__":  # the worker, one per rank, as run_mode launches it under torchrun
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--preset", required=True)
    ap.add_argument("--modes", required=True)
    ap.add_argument("--steps", type=int, required=True)
    worker_args = ap.parse_args()
    if not worker_args.worker:
        ap.error("this file is the worker torchrun starts: run the benchmark as python -m benchmarks fsdp-memory")
    worker(worker_args.preset, worker_args.modes, worker_args.steps)
