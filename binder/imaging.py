"""Helpers shared by the image-like modalities (depth, thermal, video frames).

Reading image files (16-bit PNGs keep their integer values), checking map shapes, the CLIP-style
resize + centre crop (torchvision v2: short side to the input size, bicubic with antialiasing,
then a centre crop, as CLIP and ImageBind transform images) and a small affine augmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from binder.errors import BinderInputError, existing_file, reading

INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def as_array(item: Any, name: str) -> np.ndarray:
    """A numpy array or torch tensor -> numpy array (no copy where possible)."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.dtype == torch.bfloat16:
            item = item.float()
        item = item.numpy()
    if not isinstance(item, np.ndarray):
        raise BinderInputError(f"{name}: expected a file path, numpy array or tensor, got {type(item).__name__}")
    return item


def single_channel(x: np.ndarray, name: str, allowed: Tuple[int, ...] = (1,)) -> np.ndarray:
    """(H, W), (C, H, W) or (H, W, C) with C in ``allowed`` -> (C, H, W); otherwise an error."""
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and x.shape[-1] in allowed and x.shape[0] not in allowed:
        x = np.moveaxis(x, -1, 0)  # channels-last -> channels-first
    if x.ndim != 3 or x.shape[0] not in allowed:
        want = " or ".join(str(c) for c in allowed)
        raise BinderInputError(f"{name}: expected an (H, W) map or {want} channel(s) as (C, H, W) / (H, W, C), "
                               f"got shape {tuple(x.shape)}")
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise BinderInputError(f"{name} is empty: got shape {tuple(x.shape)}, expected at least 1 x 1 pixels")
    return x


def read_image_array(path: "str | Path", kind: str) -> np.ndarray:
    """Any PIL-readable image file -> numpy array (16-bit PNGs keep their integer values)."""
    path = existing_file(path, kind, "an image file")
    with reading(path, f"{kind} file", "a readable image"):
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGB")
            return np.array(im)


def resize_center_crop(x: torch.Tensor, size: "int | Sequence[int]", interpolation: str = "bicubic",
                       clamp: bool = False) -> torch.Tensor:
    """(..., C, H, W) -> (..., C, h, w): resize so the image covers ``size`` (the short side for a
    square), then a centre crop. Bicubic is antialiased (like PIL); ``clamp`` keeps [0, 1] data
    in range after bicubic overshoot."""
    h_out, w_out = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    h, w = x.shape[-2:]
    if (h, w) != (h_out, w_out):
        scale = max(h_out / h, w_out / w)
        new = [max(h_out, int(round(h * scale))), max(w_out, int(round(w * scale)))]
        x = TF.resize(x, new, interpolation=INTERPOLATION[interpolation], antialias=interpolation == "bicubic")
        if clamp:
            x = x.clamp(0.0, 1.0)
    return TF.center_crop(x, [h_out, w_out])


@dataclass
class MapAugmentConfig:
    """Train-time augmentation of one normalised single-channel map (1, S, S)."""

    max_shift: float = 0.06  # random translation, fraction of the side
    max_rotate: float = 8.0  # random in-plane rotation, degrees
    scale: float = 0.08  # random zoom in [1 - s, 1 + s]
    noise: float = 0.05  # std of added Gaussian noise (normalised units)
    erase_prob: float = 0.25  # probability of blanking one rectangle (a sensor hole, an occlusion)
    erase_size: float = 0.3  # max side of the blanked rectangle, fraction of the side


def affine_warp(x: torch.Tensor, cfg: MapAugmentConfig, fill: float) -> torch.Tensor:
    """Random rotation, zoom and shift of (C, S, S); pixels from outside the frame read ``fill``."""
    angle = math.radians((torch.rand(()).item() * 2 - 1) * cfg.max_rotate)
    zoom = 1 + (torch.rand(()).item() * 2 - 1) * cfg.scale
    tx, ty = ((torch.rand(2) * 2 - 1) * cfg.max_shift * 2).tolist()  # grid units span 2
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype)[None]  # (1, 2, 3)
    grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)  # (1, S, S, 2)
    shifted = x[None] - fill  # so out-of-frame samples read as `fill`
    return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] + fill


def augment_map(x: torch.Tensor, cfg: MapAugmentConfig, fill: float) -> torch.Tensor:
    """:func:`affine_warp`, Gaussian noise and one blanked rectangle (set to ``fill``)."""
    x = affine_warp(x, cfg, fill)  # (1, S, S)
    if cfg.noise > 0:
        x = x + torch.randn_like(x) * cfg.noise
    if torch.rand(()).item() < cfg.erase_prob:
        s = x.shape[-1]
        h, w = torch.randint(1, max(2, int(s * cfg.erase_size) + 1), (2,)).tolist()
        top, left = int(torch.randint(0, s - h + 1, ())), int(torch.randint(0, s - w + 1, ()))
        x[..., top : top + h, left : left + w] = fill
    return x
