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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional

import numpy as np
import torch

from binder.config import merge_overrides
from binder.errors import BinderConfigError, BinderInputError, existing_file, reading
from binder.imaging import MapAugmentConfig, as_array, augment_map, read_image_array, resize_center_crop, single_channel
from binder.layers import EncoderOverrides, Trunk, TrunkConfig, trunk_config
from binder.modality import ModalityConfig
from binder.registry import ModalitySpec, register_modality

STD_TINY = 1.0  # std of centred digits-world disparity in pixels (measured: 0.95), see INPUT_PRESETS

PRESETS: Dict[str, TrunkConfig] = {
    # Learns the digits world in minutes on 2 CPU cores: a conv stem (3x3 stride-2 convs 16, 32,
    # then 128; Xiao et al. 2021) turns 32 x 32 into 4 x 4 = 16 tokens. In a 200-step probe it
    # reached 70-80 % emergent zero-shot where 4 x 4 or 7 x 7 patch stems reached 25-33 %.
    "tiny": TrunkConfig(width=128, depth=4, heads=4, stem="conv", stem_channels=(16, 32), patch_norm=True),
    # ImageBind's depth trunk (imagebind_huge): 14 x 14 patches of 16 x 16 on 224 x 224, stem
    # LayerNorm, a learned key/value token, embeddings scaled by 5 after normalisation.
    "imagebind": TrunkConfig(patch=(16, 16), stride=(16, 16), width=384, depth=12, heads=8, patch_norm=True,
                             bias_kv=True, logit_scale=5.0),
}

@dataclass(frozen=True)
class DepthInput:
    """Input size and normalisation that go with an encoder preset."""

    image_size: int  # model input side
    mean: float  # disparity normalisation
    std: float
    center: bool  # subtract each map's median valid disparity


INPUT_PRESETS: Dict[str, DepthInput] = {
    # Centred disparity (each map minus its median): the shape, not the distance. The std is
    # measured on the digits world (tiles at 0.45-0.9 m); with absolute disparity (ImageBind's
    # way) the 1-3 cm relief is ~0.1 std against a +-1.5 std distance offset and a tiny encoder
    # stayed at chance for 200 steps in a probe.
    "tiny": DepthInput(image_size=32, mean=0.0, std=STD_TINY, center=True),
    # ImageBind: B x 1 x 224 x 224 absolute disparity with the community statistics (issue #107).
    "imagebind": DepthInput(image_size=224, mean=0.0418, std=0.0295, center=False),
}
"""Input size and normalisation of each preset (used where the config leaves them null)."""


@dataclass
class DepthConfig(ModalityConfig):
    """Depth preprocessing + encoder settings (the schema of ``modality=depth``)."""

    modality: ClassVar[str] = "depth"
    presets: ClassVar[Mapping[str, TrunkConfig]] = PRESETS

    # encoder + input preset: tiny (32 x 32, minutes on 2 CPU cores) | imagebind (384 wide, 12 deep, 224 x 224)
    preset: str = "tiny"
    encoder: EncoderOverrides = field(default_factory=EncoderOverrides)  # overrides of the preset's trunk
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
    augment: MapAugmentConfig = field(default_factory=MapAugmentConfig)  # train-time augmentation

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.min_depth < self.max_depth:
            raise BinderConfigError(f"depth config needs 0 < min_depth < max_depth, "
                                    f"got {self.min_depth}, {self.max_depth}")
        if self.focal_length <= 0 or self.baseline <= 0 or self.depth_scale <= 0:
            raise BinderConfigError("depth config: focal_length, baseline and depth_scale must be positive")

    @property
    def inputs(self) -> DepthInput:
        """The preset's input settings with this config's non-null values."""
        values = {"image_size": self.image_size, "mean": self.mean, "std": self.std, "center": self.center}
        return merge_overrides(INPUT_PRESETS[self.preset], values, "depth")

    def trunk(self) -> TrunkConfig:
        """The preset's trunk with the ``encoder`` overrides, on (1, S, S) disparity maps."""
        size = self.inputs.image_size
        return trunk_config(PRESETS[self.preset], self.encoder, 1, (size, size), "depth")


class DepthPreprocessor:
    """Metric depth (file, array or tensor) -> normalised disparity (1, 1, S, S)."""

    def __init__(self, cfg: DepthConfig) -> None:
        self.cfg = cfg

    def read(self, path: "str | Path") -> np.ndarray:
        """Read a depth file: ``.npy`` (metres, or integer millimetres), 16-bit PNG / TIFF."""
        path = Path(path)
        if path.suffix.lower() == ".npy":
            existing_file(path, "depth", "a .npy file")
            with reading(path, "depth file", "a readable .npy array"):
                return np.load(path, allow_pickle=False)
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
        inputs = self.cfg.inputs
        if inputs.center:
            valid = ~np.isnan(depth)
            disp = np.where(valid, disp - np.median(disp[valid]), 0.0).astype(np.float32)
        disp = torch.from_numpy(disp)[None]  # (1, H, W)
        disp = resize_center_crop(disp, inputs.image_size)  # (1, S, S)
        return ((disp - inputs.mean) / inputs.std)[None]  # (K=1, 1, S, S)


class DepthAugment:
    """Random small affine warp, sensor-like holes and noise on one normalised map (1, S, S);
    holes and out-of-frame pixels read as disparity 0 (missing), as the preprocessor writes them."""

    def __init__(self, cfg: DepthConfig) -> None:
        self.aug = cfg.augment
        inputs = cfg.inputs
        self.missing = (0.0 - inputs.mean) / inputs.std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return augment_map(x, self.aug, self.missing)


class DepthEncoder(Trunk):
    """Transformer over (N, 1, S, S) disparity maps (ImageBind's depth trunk, resizable)."""

    def __init__(self, cfg: DepthConfig) -> None:
        super().__init__(cfg.trunk())


def example_input() -> np.ndarray:
    """A 40 x 52 depth map in metres with a few holes."""
    depth = np.random.default_rng(0).uniform(0.5, 3.0, (40, 52)).astype(np.float32)
    depth[:3, :5] = 0.0
    return depth


SPEC = register_modality(ModalitySpec(
    name="depth", config_cls=DepthConfig, preprocessor_cls=DepthPreprocessor, encoder_cls=DepthEncoder,
    augment_cls=DepthAugment, example_input=example_input,
    extensions=(".npy", ".png", ".tif", ".tiff"),
))
