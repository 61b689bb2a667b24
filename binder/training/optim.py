"""AdamW with decoupled weight decay groups and a linear-warmup cosine schedule.

ImageBind's recipe (arXiv 2305.05665, Table 9): AdamW betas (0.9, 0.95), warmup then cosine
decay; biases, norms, positional embeddings and tokens are not decayed (timm convention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, List, Tuple

import torch
from torch import nn

from binder.config import SCHEMAS


@dataclass
class OptimConfig:
    """Optimiser and schedule settings (the schema of the ``optim`` node)."""

    lr: float = 1.6e-3  # peak learning rate
    weight_decay: float = 0.2  # decoupled weight decay on matrices
    betas: Tuple[float, float] = (0.9, 0.95)  # AdamW betas
    warmup_epochs: float = 2.0  # linear warmup length in epochs
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak


SCHEMAS.register("optim/adamw", OptimConfig)


def param_groups(modules: Iterable[Tuple[str, nn.Module]], weight_decay: float) -> List[dict]:
    """Split trainable parameters into decayed (matrices) and non-decayed groups."""
    decay, no_decay = [], []
    for prefix, module in modules:
        skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else set()
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warmup to the peak, then cosine decay to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def configure_adamw(trainer: "object", modules: Iterable[Tuple[str, nn.Module]], cfg: OptimConfig,
                    fused: bool = False) -> dict:
    """Lightning ``configure_optimizers`` result: AdamW over ``modules`` with a per-step
    warmup-cosine schedule sized from the trainer's estimated steps; ``fused``: one fused kernel
    per step (``speed.fused_adamw``) instead of the foreach path."""
    opt = torch.optim.AdamW(param_groups(modules, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                            **({"fused": True} if fused else {}))
    total = int(trainer.estimated_stepping_batches)
    per_epoch = max(1, total // max(1, trainer.max_epochs or 1))
    sched = warmup_cosine(opt, int(cfg.warmup_epochs * per_epoch), total, cfg.min_lr_ratio)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

