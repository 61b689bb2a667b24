"""Reusable encoder building blocks: a patch ViT with the binder encoder interface.

The structure follows ImageBind's modality trunks (arXiv 2305.05665, appendix C): a convolutional
patch stem (kernel may differ from stride, as for ImageBind audio: kernel 16, stride 10), a CLS
token, learnable positional embeddings, pre-norm transformer blocks with stochastic depth, and a
final LayerNorm whose CLS output is the pooled feature. Blocks come from timm.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

import torch
from einops import rearrange
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from binder.errors import BinderInputError


@dataclass
class ViTConfig:
    """Size of a patch ViT trunk."""

    patch: Tuple[int, int] = (16, 16)  # patch (kernel) size over (H, W)
    stride: Tuple[int, int] = (16, 16)  # patch stride; smaller than patch = overlapping patches
    width: int = 768  # token width
    depth: int = 12  # number of transformer blocks
    heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / token width
    drop_path: float = 0.0  # stochastic depth rate at the last block (linear ramp)
    dropout: float = 0.0  # dropout on the pooled feature
    pool: str = "cls"  # pooled feature: cls (ImageBind) | mean (average of patch tokens)
    patch_norm: bool = False  # LayerNorm on patch tokens before the blocks (ImageBind's stems)
    stem: str = "patch"  # patch: one strided conv (ImageBind) | conv: 3x3 stride-2 conv stack (Xiao et al. 2021)
    stem_channels: Tuple[int, ...] = (16, 32, 64)  # conv stem widths before the final projection


def vit_overrides(encoder: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The non-null ``encoder:`` overrides of a modality config, checked against ViTConfig's fields."""
    overrides = {k: v for k, v in dict(encoder).items() if v is not None}
    unknown = sorted(set(overrides) - set(ViTConfig.__dataclass_fields__))
    if unknown:
        raise BinderInputError(f"{name} encoder overrides {unknown} are not ViTConfig fields")
    return overrides


def merge_vit(preset: ViTConfig, encoder: Dict[str, Any], name: str) -> ViTConfig:
    """``preset`` with the non-null ``encoder`` overrides of modality ``name`` applied."""
    return ViTConfig(**{**asdict(preset), **vit_overrides(encoder, name)})


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def conv_stem(in_chans: int, width: int, channels: Tuple[int, ...]) -> nn.Sequential:
    """3x3 stride-2 conv + BatchNorm + ReLU per entry of ``channels``, then a 3x3 stride-2
    projection to ``width``: a 2^(len+1) downsampling patchifier that trains faster than one
    large strided conv on small data (Xiao et al., "Early Convolutions Help Transformers See
    Better", NeurIPS 2021)."""
    layers, c_in = [], in_chans
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        c_in = c
    layers.append(nn.Conv2d(c_in, width, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


def init_vit_weights(m: nn.Module) -> None:
    """timm's ViT init: truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class PatchViT(nn.Module):
    """ViT over a (C, H, W) input, e.g. a 1 x 128 x 204 spectrogram or a 1 x 224 x 224 depth map.

    Implements the binder encoder interface: ``forward_features`` (tokens), ``forward_head``
    (pooled feature), ``output_dim`` and ``set_grad_checkpointing``.
    """

    def __init__(self, cfg: ViTConfig, in_chans: int, input_size: Tuple[int, int]) -> None:
        super().__init__()
        patch, stride = _pair(cfg.patch), _pair(cfg.stride)
        self.in_chans, self.input_size = in_chans, _pair(input_size)
        if cfg.stem == "conv":
            self.patch_embed = conv_stem(in_chans, cfg.width, cfg.stem_channels)
        elif cfg.stem == "patch":
            self.patch_embed = nn.Conv2d(in_chans, cfg.width, kernel_size=patch, stride=stride, bias=False)
        else:
            raise ValueError(f"ViTConfig.stem must be 'patch' or 'conv', got {cfg.stem!r}")
        self.patch_norm = nn.LayerNorm(cfg.width, eps=1e-6) if cfg.patch_norm else nn.Identity()
        if cfg.pool not in ("cls", "mean"):
            raise ValueError(f"ViTConfig.pool must be 'cls' or 'mean', got {cfg.pool!r}")
        self.pool = cfg.pool
        with torch.no_grad():
            grid = self.patch_embed(torch.zeros(1, in_chans, *self.input_size)).shape[-2:]
        self.grid = tuple(int(g) for g in grid)
        num_tokens = grid[0] * grid[1] + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, cfg.width))
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, drop_path=r)
            for r in rates
        )
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.grad_checkpointing = False
        self._width = cfg.width
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)


    @property
    def output_dim(self) -> int:
        """Width of the pooled feature returned by :meth:`forward_head`."""
        return self._width

    @property
    def input_ndim(self) -> int:
        """Dimensions of one batch of single clips: (N, C, H, W)."""
        return 4

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set:
        """Parameter names excluded from weight decay (timm convention)."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> normalised tokens (N, 1 + S, D), CLS first."""
        if x.shape[1:] != (self.in_chans, *self.input_size):
            raise ValueError(
                f"expected input of shape (N, {self.in_chans}, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}"
            )
        x = self.patch_norm(rearrange(self.patch_embed(x), "n d h w -> n (h w) d"))  # (N, S, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (N, 1 + S, D)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        """Tokens (N, 1 + S, D) -> pooled feature (N, D): the CLS token or the patch-token mean."""
        return self.head_drop(x[:, 0] if self.pool == "cls" else x[:, 1:].mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
