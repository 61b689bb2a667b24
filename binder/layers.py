"""One transformer trunk for every binder encoder and every ImageBind tower.

The structure is ImageBind's (Girdhar et al., CVPR 2023, arXiv 2305.05665, appendix C; public
code: facebookresearch/ImageBind ``imagebind/models/imagebind_model.py``): a bias-free patch stem
(``Conv2d``, kernel 16 stride 10 for audio; ``Conv3d`` 2 x 14 x 14 for vision; windows of
samples into a ``Linear`` for IMU), an optional LayerNorm on the patch tokens, a CLS token and
learnable positional embeddings, pre-norm blocks (multi-head attention with a fused, biased input
projection and optionally one learned key/value token, ``add_bias_kv``; MLP ratio 4 with exact
GELU; stochastic depth ramping linearly), a final LayerNorm and the pooled CLS feature. A model
trained from scratch with a modality's ``imagebind`` preset therefore has exactly the
state-dict layout the official weights load into (:mod:`binder.imagebind.mapping`).

The small presets that train in minutes on a CPU use the same trunk with other settings, e.g.
the 3 x 3 convolution stack of Xiao et al. ("Early Convolutions Help Transformers See Better",
NeurIPS 2021) as the stem.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from binder.config import merge_overrides
from binder.errors import BinderConfigError, BinderInputError

STEMS = ("patch", "conv", "windows", "patch3d")
POOLS = ("cls", "mean")


@dataclass
class TrunkConfig:
    """Size and shape of one trunk. Modalities set ``in_chans`` and ``input_size``."""

    stem: str = "patch"  # patch: strided Conv2d | conv: 3x3 stride-2 conv stack | windows: IMU | patch3d: Conv3d
    in_chans: int = 1  # input channels
    input_size: Tuple[int, ...] = (224, 224)  # (H, W); windows: (samples,); patch3d: (frames, H, W)
    patch: Tuple[int, ...] = (16, 16)  # patch (kernel) size, same rank as input_size
    stride: Tuple[int, ...] = (16, 16)  # patch stride; smaller than the patch = overlapping patches
    stem_channels: Tuple[int, ...] = (16, 32, 64)  # conv stem widths before its projection
    width: int = 768  # token width
    depth: int = 12  # transformer blocks
    heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    drop_path: float = 0.0  # stochastic depth at the last block (linear ramp from 0)
    dropout: float = 0.0  # dropout on the pooled feature (ImageBind IMU: 0.5)
    pool: str = "cls"  # pooled feature: cls (ImageBind) | mean (average of the patch tokens)
    patch_norm: bool = False  # LayerNorm on the patch tokens (ImageBind: every stem but vision's)
    pre_norm: bool = False  # LayerNorm before the first block (ImageBind vision)
    bias_kv: bool = False  # one learned key/value token per attention (ImageBind's bound modalities)
    out_dim: Optional[int] = None  # bias-free projection after pooling (ImageBind vision); None: BindModel's head
    logit_scale: Optional[float] = None  # ImageBind's fixed post-normalisation scale (a buffer); None: none

    def __post_init__(self) -> None:
        for key in ("input_size", "patch", "stride", "stem_channels"):
            setattr(self, key, _positive_ints(getattr(self, key), key))
        for key in ("width", "depth", "heads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BinderConfigError(f"trunk {key} must be a positive integer, got {getattr(self, key)!r}")
        if not 0 < self.mlp_ratio <= 64 or not 0 <= self.drop_path < 1 or not 0 <= self.dropout < 1:
            raise BinderConfigError(f"trunk mlp_ratio must be in (0, 64], drop_path and dropout in [0, 1), got "
                                    f"{self.mlp_ratio}, {self.drop_path}, {self.dropout}")
        if self.stem not in STEMS or self.pool not in POOLS:
            raise BinderConfigError(f"trunk stem must be one of {STEMS} and pool one of {POOLS}, "
                                    f"got stem={self.stem!r} pool={self.pool!r}")
        if self.stem == "windows":  # windows of samples: only the last value counts
            self.patch, self.stride = self.patch[-1:], self.stride[-1:]
        if self.width % self.heads:
            raise BinderConfigError(f"trunk width {self.width} is not divisible by {self.heads} heads")

    def to_dict(self) -> dict:
        """JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _positive_ints(value: Any, key: str) -> Tuple[int, ...]:
    """An int or a sequence of positive ints -> tuple; anything else is a config error."""
    items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        out = tuple(int(v) for v in items if not isinstance(v, bool) and float(v) == int(v))
    except (TypeError, ValueError, OverflowError):
        out = ()
    if not out or len(out) != len(list(items)) or min(out) < 1:
        raise BinderConfigError(f"trunk {key} must be a positive integer or a list of them, got {value!r}")
    return out


@dataclass
class EncoderOverrides:
    """``modality.<name>.encoder``: settings that replace the preset's (null keeps the preset's)."""

    stem: Optional[str] = None  # patch | conv | windows
    patch: Optional[Any] = None  # [H, W] patch size (IMU: window length in samples)
    stride: Optional[Any] = None  # [H, W] patch stride (IMU: window hop)
    stem_channels: Optional[Any] = None  # conv stem widths
    width: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    drop_path: Optional[float] = None
    dropout: Optional[float] = None  # on the pooled feature
    pool: Optional[str] = None  # cls | mean
    patch_norm: Optional[bool] = None
    bias_kv: Optional[bool] = None
    logit_scale: Optional[float] = None


def trunk_config(preset: TrunkConfig, overrides: Any, in_chans: int, input_size: Tuple[int, ...],
                 where: str) -> TrunkConfig:
    """``preset`` with a modality's ``encoder`` overrides and its input shape."""
    cfg = merge_overrides(preset, overrides, f"{where} encoder")
    return dataclasses.replace(cfg, in_chans=in_chans, input_size=tuple(input_size))


def init_weights(m: nn.Module) -> None:
    """timm's ViT init: truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class Attention(nn.Module):
    """Multi-head self-attention with a fused in-projection and an optional learned key/value.

    The parameters are those of :class:`torch.nn.MultiheadAttention` (``in_proj`` -> ``qkv``,
    ``out_proj`` -> ``proj``, ``bias_k``, ``bias_v``); the extra key/value is appended after the
    projection, as ``add_bias_kv=True`` does there. Runs on ``scaled_dot_product_attention``
    (``impl="sdpa"``: flash or memory-efficient kernels on a GPU, fused on a CPU) or, as the
    reference it is tested against, the explicit ``softmax(q k^T / sqrt(e)) v`` (``impl="math"``);
    :func:`set_attention` switches every attention of a model.
    """

    impl: str = "sdpa"

    def __init__(self, dim: int, heads: int, bias_kv: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_k = nn.Parameter(torch.zeros(1, 1, dim)) if bias_kv else None
        self.bias_v = nn.Parameter(torch.zeros(1, 1, dim)) if bias_kv else None

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """(N, L, D) -> (N, L, D); ``causal`` masks future tokens (text)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (N, L, D) each
        if self.bias_k is not None:
            if causal:
                raise ValueError("causal attention with a learned key/value token is not supported")
            k = torch.cat([k, self.bias_k.expand(x.shape[0], -1, -1)], dim=1)  # (N, L + 1, D)
            v = torch.cat([v, self.bias_v.expand(x.shape[0], -1, -1)], dim=1)
        q, k, v = (rearrange(t, "n l (h e) -> n h l e", h=self.heads) for t in (q, k, v))
        if self.impl == "math":
            out = math_attention(q, k, v, causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (N, H, L, E)
        return self.proj(rearrange(out, "n h l e -> n l (h e)"))


ATTENTION = ("sdpa", "math")


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(E)) v on (N, H, L, E) queries and (N, H, S, E) keys/values -> (N, H, L, E);
    ``causal`` masks keys after each query's position (aligned at the start, as SDPA's is_causal)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (N, H, L, S)
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def set_attention(module: nn.Module, impl: str) -> int:
    """Make every :class:`Attention` in ``module`` use ``impl`` (sdpa | math); returns how many."""
    if impl not in ATTENTION:
        raise BinderConfigError(f"attention must be one of {ATTENTION}, got {impl!r}")
    found = [m for m in module.modules() if isinstance(m, Attention)]
    for m in found:
        m.impl = impl
    return len(found)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 bias_kv: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, bias_kv)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), causal))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Blocks(nn.ModuleList):
    """A stack of :class:`Block` with a linear stochastic-depth ramp and optional checkpointing."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 bias_kv: bool = False) -> None:
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        super().__init__(Block(dim, heads, mlp_ratio, r, bias_kv) for r in rates)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for blk in self:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, causal, use_reentrant=False)
            else:
                x = blk(x, causal)
        return x


def conv_stem(in_chans: int, width: int, channels: Tuple[int, ...]) -> nn.Sequential:
    """3x3 stride-2 conv + BatchNorm + ReLU per entry of ``channels``, then a 3x3 stride-2
    projection to ``width``: a 2^(len+1) downsampling patchifier that trains faster than one
    large strided conv on small data (Xiao et al., NeurIPS 2021)."""
    layers, c_in = [], in_chans
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        c_in = c
    layers.append(nn.Conv2d(c_in, width, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


def make_stem(cfg: TrunkConfig) -> nn.Module:
    """The patch projection of ``cfg.stem`` (bias-free, as ImageBind's, except the conv stack)."""
    if cfg.stem == "conv":
        return conv_stem(cfg.in_chans, cfg.width, cfg.stem_channels)
    if cfg.stem == "patch3d":
        return nn.Conv3d(cfg.in_chans, cfg.width, cfg.patch, stride=cfg.stride, bias=False)
    if cfg.stem == "windows":  # (N, C, T) -> windows of patch[0] samples -> Linear(C * window, width)
        return nn.Linear(cfg.in_chans * cfg.patch[0], cfg.width, bias=False)
    return nn.Conv2d(cfg.in_chans, cfg.width, cfg.patch, stride=cfg.stride, bias=False)


class Trunk(nn.Module):
    """A modality tower with the binder encoder interface (timm's ``forward_features`` /
    ``forward_head``, ``output_dim``, ``set_grad_checkpointing``)."""

    def __init__(self, cfg: TrunkConfig) -> None:
        super().__init__()
        if cfg.stem != "conv" and not len(cfg.input_size) == len(cfg.patch) == len(cfg.stride):
            raise BinderConfigError(f"trunk input_size {cfg.input_size}, patch {cfg.patch} and stride "
                                    f"{cfg.stride} must have the same length")
        if cfg.stem != "conv" and any(p > n for p, n in zip(cfg.patch, cfg.input_size)):
            raise BinderConfigError(f"encoder patch {cfg.patch} is larger than the input {cfg.input_size}: "
                                    "change the encoder's patch or the input size")
        self.cfg = cfg
        self.patch_embed = make_stem(cfg)
        self.patch_norm = nn.LayerNorm(cfg.width) if cfg.patch_norm else nn.Identity()
        with torch.no_grad():
            try:
                tokens = self.tokenize(torch.zeros(1, *self.input_shape)).shape[1]
            except RuntimeError as err:  # e.g. a conv stem deeper than the input is large
                raise BinderConfigError(f"the encoder's stem does not fit its input {self.input_shape}: "
                                        f"{err}") from None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, cfg.width))
        self.pre_norm = nn.LayerNorm(cfg.width, eps=1e-6) if cfg.pre_norm else nn.Identity()
        self.blocks = Blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.drop_path, cfg.bias_kv)
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(cfg.width, cfg.out_dim, bias=False) if cfg.out_dim else None
        if cfg.logit_scale is not None:
            self.register_buffer("log_logit_scale", torch.tensor(math.log(cfg.logit_scale)))
        self.apply(init_weights)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    @property
    def output_dim(self) -> int:
        """Width of :meth:`forward`'s output."""
        return self.cfg.out_dim or self.cfg.width

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """Shape of one input without the batch dimension."""
        return (self.cfg.in_chans, *self.cfg.input_size)

    @property
    def input_ndim(self) -> int:
        """Dimensions of one batch of single clips: (N, C, *input_size)."""
        return 1 + len(self.input_shape)

    @property
    def logit_scale(self) -> Optional[float]:
        """ImageBind's post-normalisation scale (clipped at 100), if this trunk has one."""
        scale = getattr(self, "log_logit_scale", None)
        return None if scale is None else float(scale.float().exp().clamp(max=100.0))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory."""
        self.blocks.grad_checkpointing = enable

    def no_weight_decay(self) -> set:
        """Parameter names excluded from weight decay (timm convention)."""
        return {"pos_embed", "cls_token"}

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (N, C, *input_size) -> patch tokens (N, S, D)."""
        if self.cfg.stem == "patch3d" and x.ndim == 4:  # an image becomes a still clip (N, C, T, H, W)
            x = x.unsqueeze(2).expand(-1, -1, self.cfg.input_size[0], -1, -1)
        if tuple(x.shape[1:]) != self.input_shape:
            raise BinderInputError(f"encoder input must have shape (N, {', '.join(map(str, self.input_shape))}), "
                                   f"got {tuple(x.shape)}")
        x = x.to(next(self.patch_embed.parameters()).dtype)
        if self.cfg.stem == "windows":
            windows = x.unfold(-1, self.cfg.patch[0], self.cfg.stride[0])  # (N, C, S, window)
            return self.patch_embed(rearrange(windows, "n c s w -> n s (c w)"))  # channel-major values
        return rearrange(self.patch_embed(x), "n d ... -> n (...) d")  # (N, S, D)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs -> normalised tokens (N, 1 + S, D), CLS first."""
        x = self.patch_norm(self.tokenize(x))  # (N, S, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (N, 1 + S, D)
        return self.norm(self.blocks(self.pre_norm(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (N, 1 + S, D) -> pooled feature (N, output_dim); ``pre_logits`` skips ``proj``."""
        x = self.head_drop(x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(1))
        return x if pre_logits or self.proj is None else self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
