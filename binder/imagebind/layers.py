"""ImageBind's towers, written for binder: patch stems, pre-norm transformer trunks, heads.

Architecture of ``imagebind_huge`` (Girdhar et al., CVPR 2023, arXiv 2305.05665, appendix C;
public code: facebookresearch/ImageBind ``imagebind/models/imagebind_model.py``):

* stems without bias: vision ``Conv3d`` 2 x 14 x 14 on an image repeated into 2 frames; audio
  ``Conv2d`` kernel 16 stride 10 on 1 x 128 x 204; depth and thermal ``Conv2d`` kernel 16 on
  1 x 224 x 224; IMU: 6 x 2000 cut into 250 windows of 8 samples, each 6 x 8 = 48 values ->
  ``Linear(48, width)``. Every stem but vision's is followed by a LayerNorm (PyTorch's default
  eps 1e-5); a CLS token and learnable positional embeddings follow.
* trunk: pre-norm blocks (LayerNorm eps 1e-6, multi-head attention with a fused, biased input
  projection, MLP ratio 4 with exact GELU, stochastic depth ramping linearly to ``drop_path``).
  Vision applies a LayerNorm (eps 1e-6) before the first block; the bound modalities (audio,
  depth, thermal, IMU) append one learned key/value token to every attention (``add_bias_kv``).
* head: LayerNorm (eps 1e-6) on the CLS token (text: on the end-of-text token, the arg-max of the
  token ids, after a causal transformer), IMU dropout 0.5, bias-free ``Linear`` to 1024.
* post-processing: L2 normalisation, then a logit scale: learnable for text (init 1/0.07, at
  most 100), fixed x20 audio, x5 depth, x10 thermal, x5 IMU. binder keeps the log-scale as a
  buffer (``log_logit_scale``); embeddings are L2-normalised, so it changes no direction.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from binder.errors import BinderInputError

STEMS = ("conv2d", "conv3d", "windows")


@dataclass
class TrunkConfig:
    """Size and shape of one ImageBind patch trunk (vision, audio, depth, thermal or IMU)."""

    stem: str = "conv2d"  # conv2d (audio, depth, thermal) | conv3d (vision) | windows (IMU)
    in_chans: int = 1  # input channels (vision 3, IMU 6)
    input_size: Tuple[int, ...] = (224, 224)  # (H, W); conv3d: (frames, H, W); windows: (length,)
    kernel: Tuple[int, ...] = (16, 16)  # patch kernel, same rank as input_size
    stride: Tuple[int, ...] = (16, 16)  # patch stride (audio: 10, overlapping patches)
    width: int = 768  # token width
    depth: int = 12  # transformer blocks
    heads: int = 12  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    drop_path: float = 0.0  # stochastic depth at the last block (linear ramp from 0)
    head_dropout: float = 0.0  # dropout on the pooled CLS feature (IMU: 0.5)
    patch_norm: bool = True  # LayerNorm (eps 1e-5) after the stem (all but vision)
    pre_norm: bool = False  # LayerNorm (eps 1e-6) before the first block (vision)
    bias_kv: bool = True  # one learned key/value token per attention (all but vision)
    out_dim: Optional[int] = None  # bias-free projection inside the trunk (vision); None: BindModel's head
    logit_scale: Optional[float] = 20.0  # fixed post-normalisation scale kept as a buffer; None: none

    def __post_init__(self) -> None:
        self.input_size, self.kernel, self.stride = (tuple(int(v) for v in t)
                                                     for t in (self.input_size, self.kernel, self.stride))
        if self.stem not in STEMS:
            raise BinderInputError(f"ImageBind trunk stem must be one of {STEMS}, got {self.stem!r}")
        if not len(self.input_size) == len(self.kernel) == len(self.stride):
            raise BinderInputError(f"input_size {self.input_size}, kernel {self.kernel} and stride "
                                   f"{self.stride} must have the same length")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrunkConfig":
        """Rebuild from :func:`dataclasses.asdict` output (e.g. read back from config.json)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BinderInputError(f"ImageBind trunk config has unknown keys {unknown}")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def grid(self) -> Tuple[int, ...]:
        """Patch grid of one input (frames/rows/columns or windows)."""
        return tuple((n - k) // s + 1 for n, k, s in zip(self.input_size, self.kernel, self.stride))

    @property
    def num_patches(self) -> int:
        """Patch tokens per input (the CLS token not counted)."""
        return math.prod(self.grid)


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


class Attention(nn.Module):
    """Multi-head self-attention with a fused in-projection and optional learned key/value token.

    The parameters are those of :class:`torch.nn.MultiheadAttention` (``in_proj`` -> ``qkv``,
    ``out_proj`` -> ``proj``, ``bias_k``, ``bias_v``); the extra key/value is appended after the
    projection, as ``add_bias_kv=True`` does there. Runs on ``scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int, bias_kv: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise BinderInputError(f"attention width {dim} is not divisible by {heads} heads")
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
            n = x.shape[0]
            k = torch.cat([k, self.bias_k.expand(n, -1, -1)], dim=1)  # (N, L + 1, D)
            v = torch.cat([v, self.bias_v.expand(n, -1, -1)], dim=1)
        q, k, v = (rearrange(t, "n l (h e) -> n h l e", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (N, H, L, E)
        return self.proj(rearrange(out, "n h l e -> n l (h e)"))


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

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, drop_path: float,
                 bias_kv: bool) -> None:
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # linear ramp
        super().__init__(Block(dim, heads, mlp_ratio, r, bias_kv) for r in rates)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for blk in self:
            if self.grad_checkpointing and self.training:
                x = checkpoint(blk, x, causal, use_reentrant=False)
            else:
                x = blk(x, causal)
        return x


def _init_weights(m: nn.Module) -> None:
    """Xavier-uniform linear weights, zero biases, unit LayerNorms (ImageBind's "jax" style)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def make_stem(cfg: TrunkConfig) -> nn.Module:
    """The bias-free patch projection of ``cfg.stem``."""
    if cfg.stem == "conv2d":
        return nn.Conv2d(cfg.in_chans, cfg.width, cfg.kernel, stride=cfg.stride, bias=False)
    if cfg.stem == "conv3d":
        return nn.Conv3d(cfg.in_chans, cfg.width, cfg.kernel, stride=cfg.stride, bias=False)
    if cfg.kernel != cfg.stride:
        raise BinderInputError(f"windowed stems need kernel == stride, got {cfg.kernel} and {cfg.stride}")
    return nn.Linear(cfg.in_chans * cfg.kernel[0], cfg.width, bias=False)


class ImageBindTrunk(nn.Module):
    """One ImageBind modality tower with the binder encoder interface.

    ``forward_features`` returns the head-normalised tokens, ``forward_head`` the CLS feature
    (width ``output_dim``); with ``cfg.out_dim`` (vision) the trunk also projects to the joint space.
    """

    def __init__(self, cfg: TrunkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = make_stem(cfg)
        self.patch_norm = nn.LayerNorm(cfg.width) if cfg.patch_norm else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.width))
        self.pre_norm = nn.LayerNorm(cfg.width, eps=1e-6) if cfg.pre_norm else nn.Identity()
        self.blocks = Blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.drop_path, cfg.bias_kv)
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.proj = nn.Linear(cfg.width, cfg.out_dim, bias=False) if cfg.out_dim else None
        if cfg.logit_scale is not None:
            self.register_buffer("log_logit_scale", torch.tensor(math.log(cfg.logit_scale)))
        self.apply(_init_weights)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    @property
    def output_dim(self) -> int:
        """Width of :meth:`forward` output."""
        return self.cfg.out_dim or self.cfg.width

    @property
    def input_ndim(self) -> int:
        """Dimensions of one batch of single clips: (N, C, *input_size) (vision: also (N, C, H, W))."""
        return 2 + len(self.cfg.input_size)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """Shape of one input without the batch dimension."""
        return (self.cfg.in_chans, *self.cfg.input_size)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory."""
        self.blocks.grad_checkpointing = enable

    def no_weight_decay(self) -> set:
        """Parameter names excluded from weight decay (timm convention)."""
        return {"pos_embed", "cls_token"}

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs -> patch tokens (N, S, D)."""
        x = x.to(self.cls_token.dtype)
        if self.cfg.stem == "conv3d" and x.ndim == 4:  # an image becomes a still clip: (N, C, T, H, W)
            x = x.unsqueeze(2).expand(-1, -1, self.cfg.input_size[0], -1, -1)
        if tuple(x.shape[1:]) != self.input_shape:
            raise BinderInputError(f"ImageBind trunk expects input of shape (N, {', '.join(map(str, self.input_shape))}), "
                                   f"got {tuple(x.shape)}")
        if self.cfg.stem == "windows":  # (N, C, L) -> (N, L / w, C * w): windows of w samples
            return self.patch_embed(rearrange(x, "n c (s w) -> n s (c w)", w=self.cfg.kernel[0]))
        return rearrange(self.patch_embed(x), "n d ... -> n (...) d")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs -> normalised tokens (N, 1 + S, D), CLS first."""
        x = self.patch_norm(self.tokenize(x))  # (N, S, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(self.pre_norm(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (N, 1 + S, D) -> CLS feature (N, D), projected unless ``pre_logits``."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits or self.proj is None else self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def logit_scale(self) -> Optional[float]:
        """ImageBind's post-normalisation scale (clipped at 100), if this trunk has one."""
        scale = getattr(self, "log_logit_scale", None)
        return None if scale is None else float(scale.float().exp().clamp(max=100.0))


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
        self.apply(_init_weights)
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


__all__ = ["Attention", "Block", "Blocks", "ImageBindTrunk", "TextConfig", "TextTower", "TrunkConfig"]
