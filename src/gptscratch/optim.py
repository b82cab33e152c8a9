"""AdamW with GPT-2's two parameter groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn


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


def configure_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW over `param_groups`, fused on CUDA (one kernel for all parameters), foreach elsewhere."""
    kwargs: dict = {}
    sig = inspect.signature(torch.optim.AdamW).parameters
    if device_type == "cuda" and "fused" in sig:
        kwargs["fused"] = True
    elif "foreach" in sig:
        kwargs["foreach"] = True
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **kwargs)


def lr_at(step: int, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup from max_lr/warmup_steps to max_lr, then cosine decay to min_lr at max_steps."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
