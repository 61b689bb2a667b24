"""Depth modality: metric depth -> disparity maps for a single-channel ViT (ImageBind's depth branch).

ImageBind (arXiv 2305.05665, sec. 3.2 and appendix C) encodes depth as a one-channel image of
*disparity*, following Omnivore (arXiv 2201.08377): depth in metres is clipped to
``[min_depth, max_depth]`` and converted with ``disparity = focal_length * baseline / depth``
(focal length in pixels, stereo baseline in metres; Omnivore's SUN RGB-D code uses each sensor's
focal length and a Kinect-like baseline of 0.075 m). The map is then resized like an image
(short side to the input size, bicubic, centre crop) and normalised with a fixed mean/std;
for ImageBind's own units the community statistics are mean 0.0418, std 0.0295 (ImageBind issue
#107). Those do not match pixel disparities from the formula (about 4-40 px for indoor scenes
with the Kinect defaults), so ImageBind's exact training units remain uncertain: fit ``mean`` /
``std`` to your data when training. ImageBind ships no depth loader; this module writes the
recipe down:

1. read metric depth: float arrays/tensors/``.npy``/float TIFF in metres, integer arrays and
   16-bit PNGs in millimetres (``depth_scale`` metres per unit);
2. invalid pixels (0, negative, and NaN when ``nan_is_missing``) are *missing*: they get
   disparity 0, i.e. "no return / infinitely far", instead of Omnivore's clip to ``min_depth``,
   which turns every hole into the nearest possible surface;
3. valid depth (+inf included) is clipped to ``[min_depth, max_depth]`` and converted to disparity;
4. optionally (``center``; the ``tiny`` preset's default) subtract each map's median valid
   disparity, holes reading as that median: the model then sees the shape, not the distance;
5. resize (short side, bicubic, antialiased) + centre crop to ``image_size``; normalise.

The encoder is ImageBind's depth trunk (Conv2d stem, kernel = stride = 16, LayerNorm on the
patch tokens, 384 wide, 12 deep, 8 heads) or the ``tiny`` preset for 2 CPU cores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from binder.errors import BinderInputError
from binder.layers import PatchViT, ViTConfig, merge_vit
from binder.registry import ModalitySpec, register_modality
from binder.types import Modality

STD_TINY = 1.0  # std of centred digits-world disparity in pixels (measured: 0.95), see INPUT_PRESETS

PRESETS: Dict[str, ViTConfig] = {
    # Learns the digits world in minutes on 2 CPU cores: a conv stem (3x3 stride-2 convs 16, 32,
    # then 128; Xiao et al. 2021) turns 32 x 32 into 4 x 4 = 16 tokens. In a 200-step probe it
    # reached 70-80 % emergent zero-shot where 4 x 4 or 7 x 7 patch stems reached 25-33 %.
    "tiny": ViTConfig(width=128, depth=4, heads=4, stem="conv", stem_channels=(16, 32), patch_norm=True),
    # ImageBind's depth trunk (imagebind_huge): 14 x 14 patches of 16 x 16 on 224 x 224.
    "imagebind": ViTConfig(patch=(16, 16), stride=(16, 16), width=384, depth=12, heads=8, patch_norm=True),
}

INPUT_PRESETS: Dict[str, Dict[str, Any]] = {
    # Centred disparity (each map minus its median): the shape, not the distance. The std is
    # measured on the digits world (tiles at 0.45-0.9 m); with absolute disparity (ImageBind's
    # way) the 1-3 cm relief is ~0.1 std against a +-1.5 std distance offset and a tiny encoder
    # stayed at chance for 200 steps in a probe.
    "tiny": {"image_size": 32, "mean": 0.0, "std": STD_TINY, "center": True},
    # ImageBind: B x 1 x 224 x 224 absolute disparity with the community statistics (issue #107).
    "imagebind": {"image_size": 224, "mean": 0.0418, "std": 0.0295, "center": False},
}
"""Input size and normalisation of each preset (used where the config leaves them null)."""


@dataclass
class DepthAugmentConfig:
    """Train-time augmentation of one normalised disparity map (1, S, S)."""

    max_shift: float = 0.06  # random translation, fraction of the side
    max_rotate: float = 8.0  # random in-plane rotation, degrees
    scale: float = 0.08  # random zoom in [1 - s, 1 + s]
    noise: float = 0.05  # std of added Gaussian noise (normalised units)
    erase_prob: float = 0.25  # probability of blanking one rectangle (a sensor hole)
    erase_size: float = 0.3  # max side of the blanked rectangle, fraction of the side


@dataclass
class DepthConfig:
    """Depth preprocessing + encoder settings; mirrored by configs/modality/depth.yaml."""

    name: str = "depth"  # modality name (registry key)
    preset: str = "tiny"  # encoder + input preset: tiny | imagebind
    encoder: Dict[str, Any] = field(  # overrides of the preset's ViTConfig (None = keep the preset's)
        default_factory=lambda: {name: None for name in ViTConfig.__dataclass_fields__})
    image_size: Optional[int] = None  # model input side in pixels; None = the preset's (tiny 32, imagebind 224)
    focal_length: float = 518.857901  # pixels; disparity = focal_length * baseline / depth (Omnivore, NYU/SUN Kinect)
    baseline: float = 0.075  # metres (Omnivore's Kinect baseline)
    min_depth: float = 0.01  # valid depths are clipped to [min_depth, max_depth] metres (Omnivore)
    max_depth: float = 50.0
    depth_scale: float = 0.001  # metres per unit of integer depth (16-bit PNGs in millimetres)
    nan_is_missing: bool = True  # NaN marks missing pixels (else NaN input is an error)
    center: Optional[bool] = None  # subtract each map's median valid disparity (holes read as it); None = the preset's
    mean: Optional[float] = None  # disparity normalisation mean; None = the preset's
    std: Optional[float] = None  # disparity normalisation std; None = the preset's
    temperature: float = 0.2  # fixed InfoNCE temperature (ImageBind depth)
    augment: DepthAugmentConfig = field(default_factory=DepthAugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = DepthAugmentConfig(**self.augment)
        if self.preset not in PRESETS:
            raise BinderInputError(f"unknown depth preset {self.preset!r}; expected one of {sorted(PRESETS)}")
        if not 0 < self.min_depth < self.max_depth:
            raise BinderInputError(f"depth config needs 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.focal_length <= 0 or self.baseline <= 0 or self.depth_scale <= 0:
            raise BinderInputError("depth config: focal_length, baseline and depth_scale must be positive")

    def vit(self) -> ViTConfig:
        """The preset's ViTConfig with ``encoder`` overrides applied."""
        return merge_vit(PRESETS[self.preset], self.encoder, "depth")

    @property
    def input_size(self) -> int:
        """Side of the square model input."""
        return int(self.image_size or INPUT_PRESETS[self.preset]["image_size"])

    @property
    def centred(self) -> bool:
        """Whether each map's median valid disparity is subtracted."""
        return bool(INPUT_PRESETS[self.preset]["center"] if self.center is None else self.center)

    @property
    def norm(self) -> Tuple[float, float]:
        """(mean, std) of the disparity normalisation."""
        preset = INPUT_PRESETS[self.preset]
        mean = preset["mean"] if self.mean is None else self.mean
        std = preset["std"] if self.std is None else self.std
        return float(mean), float(std)


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
        raise BinderInputError(
            f"{name}: expected an (H, W) map or {want} channel(s) as (C, H, W) / (H, W, C), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise BinderInputError(f"{name} is empty: got shape {tuple(x.shape)}")
    return x


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): short side to ``size`` (bicubic, antialiased), centre crop,
    as CLIP/ImageBind's image transform (Resize(size) + CenterCrop(size))."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", align_corners=False,
                          antialias=new_h < h)[0]  # (C, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, top : top + size, left : left + size].contiguous()


def read_image_array(path: "str | Path", kind: str) -> np.ndarray:
    """Any PIL-readable image file -> numpy array (16-bit PNGs keep their integer values)."""
    path = Path(path)
    if not path.is_file():
        raise BinderInputError(f"{kind} file {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGB")
            return np.array(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise BinderInputError(f"{kind} file {str(path)!r} is not a readable image: {err}") from err


class DepthPreprocessor:
    """Metric depth (file, array or tensor) -> normalised disparity (1, 1, S, S)."""

    def __init__(self, cfg: DepthConfig) -> None:
        self.cfg = cfg

    def read(self, path: "str | Path") -> np.ndarray:
        """Read a depth file: ``.npy`` (metres, or integer millimetres), 16-bit PNG / TIFF."""
        path = Path(path)
        if path.suffix.lower() == ".npy":
            if not path.is_file():
                raise BinderInputError(f"depth file {str(path)!r} does not exist")
            try:
                return np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise BinderInputError(f"depth file {str(path)!r} is not a readable .npy array: {err}") from err
        return read_image_array(path, "depth")

    def metres(self, x: np.ndarray, name: str) -> np.ndarray:
        """Validated depth in metres (H, W) float32, NaN where missing."""
        x = single_channel(x, name)[0]
        if x.dtype.kind in "iu":
            if x.dtype == np.uint8:
                raise BinderInputError(
                    f"{name}: 8-bit depth is a visualisation, not metric depth; expected float metres "
                    "or 16-bit millimetres"
                )
            x = x.astype(np.float32) * self.cfg.depth_scale
        elif x.dtype.kind == "f":
            x = x.astype(np.float32)
            if np.isnan(x).any() and not self.cfg.nan_is_missing:
                raise BinderInputError(f"{name} contains NaN (set nan_is_missing=true if NaN marks holes)")
        else:
            raise BinderInputError(f"{name}: expected float metres or integer millimetres, got dtype {x.dtype}")
        x = np.where(x > 0, x, np.nan)  # 0, negative and NaN: missing; +inf is far (clipped later)
        if np.isnan(x).all():
            raise BinderInputError(f"{name} has no valid pixel: every depth is 0, negative or NaN")
        return x

    def disparity(self, depth_m: np.ndarray) -> np.ndarray:
        """Depth in metres (NaN = missing) -> disparity in pixels, 0 where missing (Omnivore recipe)."""
        c = self.cfg
        depth = np.clip(depth_m, c.min_depth, None)
        disp = c.focal_length * c.baseline / np.minimum(depth, c.max_depth)  # +inf -> max_depth
        return np.nan_to_num(disp, nan=0.0).astype(np.float32)

    def __call__(self, item: Any, sample_rate: Optional[int] = None, train: bool = False,
                 num_clips: Optional[int] = None) -> torch.Tensor:
        """Preprocess one depth map -> (1, 1, S, S) (one view; ``sample_rate`` is unused)."""
        if isinstance(item, (str, Path)):
            name, x = f"depth file {str(item)!r}", self.read(item)
        else:
            name, x = "depth input", as_array(item, "depth input")
        depth = self.metres(x, name)
        disp = self.disparity(depth)
        if self.cfg.centred:
            valid = ~np.isnan(depth)
            disp = np.where(valid, disp - np.median(disp[valid]), 0.0).astype(np.float32)
        disp = torch.from_numpy(disp)[None]  # (1, H, W)
        disp = resize_center_crop(disp, self.cfg.input_size)  # (1, S, S)
        mean, std = self.cfg.norm
        return ((disp - mean) / std)[None]  # (K=1, 1, S, S)


class DepthAugment:
    """Random small affine warp, sensor-like holes and noise on one normalised map (1, S, S).

    Holes are filled with the value of disparity 0 (missing), as the preprocessor does.
    """

    def __init__(self, cfg: DepthConfig) -> None:
        self.aug = cfg.augment
        mean, std = cfg.norm
        self.missing = (0.0 - mean) / std

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        a = self.aug
        angle = math.radians((torch.rand(()).item() * 2 - 1) * a.max_rotate)
        zoom = 1 + (torch.rand(()).item() * 2 - 1) * a.scale
        tx, ty = ((torch.rand(2) * 2 - 1) * a.max_shift * 2).tolist()  # grid units span 2
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype)[None]  # (1, 2, 3)
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)  # (1, S, S, 2)
        shifted = x[None] - self.missing  # so out-of-frame samples read as "missing"
        return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0] + self.missing

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = self.aug
        x = self._warp(x)  # (1, S, S)
        if a.noise > 0:
            x = x + torch.randn_like(x) * a.noise
        if torch.rand(()).item() < a.erase_prob:
            s = x.shape[-1]
            h, w = (torch.randint(1, max(2, int(s * a.erase_size) + 1), (2,))).tolist()
            top, left = int(torch.randint(0, s - h + 1, ())), int(torch.randint(0, s - w + 1, ()))
            x[..., top : top + h, left : left + w] = self.missing
        return x


class DepthEncoder(PatchViT):
    """ViT over (N, 1, S, S) disparity maps (ImageBind's depth trunk, resizable)."""

    def __init__(self, cfg: DepthConfig) -> None:
        super().__init__(cfg.vit(), in_chans=1, input_size=(cfg.input_size, cfg.input_size))


SPEC = register_modality(
    ModalitySpec(
        modality=Modality.DEPTH,
        config_cls=DepthConfig,
        preprocessor_cls=DepthPreprocessor,
        encoder_cls=DepthEncoder,
        augment_cls=DepthAugment,
    )
)
