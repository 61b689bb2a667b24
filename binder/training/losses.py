"""Symmetric InfoNCE between a bound modality and its anchor target (ImageBind, eq. 1).

Embeddings from every process are all-gathered inside the loss (with gradients flowing back to
the local shard, as open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``), so the
negatives are the global batch whatever the launcher.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _gather(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """All-gather ``x`` (N, D) across processes with gradients; return (all, local offset)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


class SymmetricInfoNCE(nn.Module):
    """InfoNCE in both directions between ``x`` (N, D) and ``target`` (N, D), both L2-normalised.

    Returns named terms: ``loss/<x>-<t>`` (the mean of both directions, what is optimised),
    ``loss/<x>-><t>`` and ``loss/<t>-><x>``, and in-batch top-1 retrieval accuracies
    ``acc/<x>-><t>`` and ``acc/<t>-><x>`` (global batch).
    """

    def forward(
        self, x: torch.Tensor, target: torch.Tensor, temperature: float, names: Tuple[str, str]
    ) -> Dict[str, torch.Tensor]:
        if x.shape != target.shape:
            raise ValueError(f"embeddings differ in shape: {tuple(x.shape)} vs {tuple(target.shape)}")
        all_x, offset = _gather(x)
        all_t, _ = _gather(target)
        labels = torch.arange(x.shape[0], device=x.device) + offset
        logits_x = x @ all_t.T / temperature  # (N, world N): local x vs every target
        logits_t = target @ all_x.T / temperature  # (N, world N): local target vs every x
        a, b = names
        loss_xt = F.cross_entropy(logits_x, labels)
        loss_tx = F.cross_entropy(logits_t, labels)
        with torch.no_grad():
            acc_xt = (logits_x.argmax(-1) == labels).float().mean()
            acc_tx = (logits_t.argmax(-1) == labels).float().mean()
        return {
            f"loss/{a}-{b}": (loss_xt + loss_tx) / 2,
            f"loss/{a}->{b}": loss_xt.detach(),
            f"loss/{b}->{a}": loss_tx.detach(),
            f"acc/{a}->{b}": acc_xt,
            f"acc/{b}->{a}": acc_tx,
        }
