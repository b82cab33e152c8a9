"""Optimizers (AdamW with GPT-2's two parameter groups, or Muon + AdamW) and the learning-rate schedules."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator

import torch
import torch.nn as nn

from gptscratch.errors import UserError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the 2-D weights (matmuls, embeddings); never the biases and LayerNorm gains.

    Decaying a gain or a bias pulls it towards zero for no benefit: they hold no "capacity" to
    regularise, and a LayerNorm gain at zero silences its whole layer.
    """
    params = {id(p): p for p in model.parameters() if p.requires_grad}  # the tied head counted once
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float, device_type: str):
    """AdamW, fused on CUDA (one kernel for all parameters), foreach elsewhere."""
    kwargs: dict = {}
    sig = inspect.signature(torch.optim.AdamW).parameters
    if device_type == "cuda" and "fused" in sig:
        kwargs["fused"] = True
    elif "foreach" in sig:
        kwargs["foreach"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kwargs)


def configure_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW over `param_groups`."""
    return _adamw(param_groups(model, weight_decay), lr, betas, eps, device_type)


def _sharded_muon_step(muon: torch.optim.Optimizer) -> None:
    """torch.optim.Muon's step (`_single_tensor_muon`) for FSDP's sharded matrices (DTensors).

    Newton-Schulz needs the whole matrix; everything else in the step is elementwise. So the momentum and
    the weight update stay on each rank's shard, and only the Nesterov update is gathered, once per matrix
    and in bf16 (Newton-Schulz's first act is to cast to bf16, so gathering in bf16 changes nothing and halves
    the traffic). Every rank then runs the same Newton-Schulz, as every DDP rank does, and keeps its own rows.
    """
    from torch.distributed.tensor import DTensor, Replicate
    from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

    for group in muon.param_groups:
        params: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        bufs: list[torch.Tensor] = []
        muon._init_group(group, params, grads, bufs)
        lr, momentum = group["lr"], group["momentum"]
        for param, grad, buf in zip(params, grads, bufs, strict=True):
            buf.lerp_(grad, 1 - momentum)
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf
            whole = update.to(torch.bfloat16).full_tensor() if isinstance(update, DTensor) else update
            ortho = _zeropower_via_newtonschulz(whole, group["ns_coefficients"], group["ns_steps"], group["eps"])
            if isinstance(update, DTensor):  # Replicate -> the shard's placement is a local slice, no traffic
                ortho = DTensor.from_local(ortho, update.device_mesh, [Replicate()], run_check=False)
                ortho = ortho.redistribute(update.device_mesh, update.placements)
            param.mul_(1 - lr * group["weight_decay"])
            param.add_(ortho, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))


if hasattr(torch.optim, "Muon"):  # torch >= 2.9; MuonAdamW says what is missing otherwise

    class ShardedMuon(torch.optim.Muon):
        """torch.optim.Muon that also steps FSDP-sharded matrices (`_sharded_muon_step`); its state and
        state_dict are Muon's, so checkpoints do not depend on which of the two stepped them."""

        @torch.no_grad()
        def step(self, closure=None):
            sharded = any(type(p).__name__ == "DTensor" for g in self.param_groups for p in g["params"])
            if not sharded:
                return super().step(closure)
            if closure is not None:
                raise ValueError("ShardedMuon.step takes no closure")
            _sharded_muon_step(self)
            return None


class MuonAdamW:
    """Muon for the 2-D matrices inside the blocks, AdamW for embeddings, head, gains and biases.

    Muon orthogonalises each matrix's momentum (Newton-Schulz), which suits hidden matmuls but not
    embeddings (a lookup, not a map) or the head (nanochat and modded-nanogpt keep Adam for both).
    One object that the loop steps, zeroes and checkpoints like a single optimizer; every group keeps
    its own peak lr in `group["peak_lr"]`, which the schedule scales. Under DDP, gradients arrive
    all-reduced, so each rank runs the same Newton-Schulz on the whole matrix: redundant work, but
    exact, and small next to the forward and backward at these sizes. Under FSDP (`--parallel fsdp`)
    the matrices are shards; ShardedMuon gathers each one's update for Newton-Schulz (`_sharded_muon_step`).
    """

    def __init__(self, model: nn.Module, lr: float, muon_lr: float, momentum: float, weight_decay: float,
                 betas: tuple[float, float], eps: float, device_type: str):
        if not hasattr(torch.optim, "Muon"):
            raise UserError(f"--optimizer muon needs torch.optim.Muon, which torch {torch.__version__} lacks; "
                            "upgrade torch")
        blocks = {id(p) for name, p in model.named_parameters() if ".h." in f".{name}" and p.dim() == 2}
        matrices = [p for p in model.parameters() if id(p) in blocks]
        rest = {id(p): p for p in model.parameters() if id(p) not in blocks}  # the tied head counted once
        self.muon = ShardedMuon(matrices, lr=muon_lr, weight_decay=weight_decay, momentum=momentum,
                                     nesterov=True, adjust_lr_fn="match_rms_adamw")
        self.adamw = _adamw([{"params": [p for p in rest.values() if p.dim() >= 2], "weight_decay": weight_decay},
                             {"params": [p for p in rest.values() if p.dim() < 2], "weight_decay": 0.0}],
                            lr, betas, eps, device_type)

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The two torch optimizers (torch.distributed.checkpoint saves and loads a list of them)."""
        return [self.muon, self.adamw]

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"muon", "adamw"}:
            raise UserError("the checkpoint's optimizer state is not Muon + AdamW; resume with its --optimizer")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_optimizer(model: nn.Module, cfg, device_type: str):
    """The optimizer `cfg.optimizer` names; each param group's `peak_lr` is what the schedule scales."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        opt = MuonAdamW(model, cfg.lr, cfg.muon_lr or cfg.lr, cfg.muon_momentum, cfg.weight_decay, betas, cfg.eps,
                        device_type)
    else:
        opt = configure_optimizer(model, cfg.lr, cfg.weight_decay, betas, cfg.eps, device_type)
    for group in opt.param_groups:
        group["peak_lr"] = group["lr"]
    return opt


@contextlib.contextmanager
def restore_peak_lr(optimizer) -> Iterator[None]:
    """Around a load of saved optimizer state: each group keeps the `peak_lr` of this run's config, since
    loading replaces the groups' settings, and a checkpoint saved before groups had their own peaks has none."""
    peaks = [group["peak_lr"] for group in optimizer.param_groups]
    yield
    for group, peak in zip(optimizer.param_groups, peaks, strict=True):
        group["peak_lr"] = peak


def load_optimizer_state(optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, each group keeping this run's `peak_lr`."""
    with restore_peak_lr(optimizer):
        optimizer.load_state_dict(state)


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int, schedule: str = "cosine",
          decay_frac: float = 0.2) -> float:
    """Linear warmup from max_lr/warmup_steps to max_lr, then to min_lr at max_steps by `schedule`:

    cosine: half a cosine over all the steps after warmup (GPT-2/GPT-3).
    wsd: constant at max_lr, then linear to min_lr over the last `decay_frac` of max_steps (warmup-
    stable-decay, as nanochat and modded-nanogpt: the constant phase can be extended without
    knowing the end, and the short decay recovers what a cosine would have).
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, max_steps - round(decay_frac * max_steps))
        if step < decay_start:
            return max_lr
        return max_lr + (min_lr - max_lr) * (step - decay_start) / max(1, max_steps - decay_start)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
