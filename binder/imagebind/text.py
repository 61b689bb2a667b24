"""ImageBind's text tower: OpenCLIP's causal transformer over CLIP BPE tokens.

Architecture of ``imagebind_huge`` (Girdhar et al., CVPR 2023, arXiv 2305.05665; public code:
facebookresearch/ImageBind ``imagebind/models/imagebind_model.py``): token and positional
embeddings, causal pre-norm blocks (:class:`binder.layers.Blocks`), a LayerNorm on the
end-of-text token (the arg-max of the token ids), a bias-free projection, and a learnable logit
scale (init 1/0.07, at most 100). The other towers are :class:`binder.layers.Trunk`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict

import torch
from torch import nn

from binder.errors import BinderInputError
from binder.layers import Blocks, init_weights


@dataclass
class TextConfig:
    """Size of ImageBind's causal text transformer (OpenCLIP's text tower)."""

    vocab_size: int = 49408  # CLIP BPE vocabulary
    context_length: int = 77  # token positions
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    out_dim: int = 1024  # joint embedding width

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class TextTower(nn.Module):
    """Causal transformer over CLIP BPE tokens, pooled at the end-of-text token, projected."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.width))
        self.blocks = Blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, 0.0, bias_kv=False)
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.proj = nn.Linear(cfg.width, cfg.out_dim, bias=False)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.apply(init_weights)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) -> projected end-of-text features (N, out_dim)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.cfg.context_length or tokens.is_floating_point():
            raise BinderInputError(f"ImageBind text expects integer token ids of shape (N, "
                                   f"{self.cfg.context_length}), got {tuple(tokens.shape)} {tokens.dtype}")
        x = self.token_embed(tokens) + self.pos_embed  # (N, L, D)
        x = self.blocks(x, causal=True)
        eot = tokens.argmax(dim=-1)  # the end-of-text id is the largest in the vocabulary
        return self.proj(self.norm(x[torch.arange(x.shape[0], device=x.device), eot]))

    @property
    def logit_scale(self) -> float:
        """The learned text logit scale (clipped at 100)."""
        return float(self.log_logit_scale.detach().float().exp().clamp(max=100.0))


__all__ = ["TextConfig", "TextTower"]
