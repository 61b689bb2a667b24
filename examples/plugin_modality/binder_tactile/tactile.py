"""Tactile modality: 2-D pressure maps from a tactile sensor array, bound to binder's CLIP space.

A tactile array reports, per *taxel* (tactile element), the normal pressure on it: a
piezoresistive or capacitive grid (e.g. the 32 x 32 electrode grid of the scalable tactile glove,
Sundaram et al., Nature 569, 2019) directly, a GelSight-like optical sensor (Yuan et al.,
Sensors 17(12), 2017) after reconstructing pressure from the elastomer's deformation. Either way
the model input is one map, (H, W) in kPa: the modality is image-like and follows binder's
single-channel recipe (``binder.modalities.depth`` / ``thermal``, after ImageBind's depth and
thermal branches, arXiv 2305.05665): one channel, a fixed normalisation, a small transformer
trunk. ImageBind has no touch branch, so the pressure-specific steps are this plugin's choices:

1. read the map: ``.npy`` (any real dtype) or ``.csv`` grids (comma-separated rows, ``#``
   comments), numpy arrays or torch tensors, shape (H, W) (or (1, H, W) / (H, W, 1));
2. check it: finite, not empty, pressure >= 0 (values down to ``-negative_tolerance`` are
   offset noise and read 0); convert ``unit`` to kPa;
3. scale to [0, 1] by ``max_pressure`` (kPa); higher pressure saturates, as the sensor's range;
4. pad to a square with zero pressure (no contact; a centre crop, as for images, would drop edge
   taxels that may carry the contact), resize to ``grid_size`` (bicubic, antialiased, clamped
   to [0, 1]) and normalise with ``mean`` / ``std`` (measured on the digits-world renders).

The ``tiny`` preset (binder's depth/thermal ``tiny``: a 3 x 3 conv stem, 4 x 128 transformer on
32 x 32) trains in minutes on 2 CPU cores. :func:`render` is the digits world's tactile sensor:
a digit-shaped stamp pressed onto a 32 x 32 taxel grid.

This module is a binder plugin: it is found through the ``binder.modalities`` entry point of
the ``binder-tactile`` distribution and registers itself on import; binder is not changed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from binder.errors import BinderConfigError, BinderInputError
from binder.imaging import MapAugmentConfig, as_array, augment_map, resize_center_crop, single_channel
from binder.layers import EncoderOverrides, Trunk, TrunkConfig, trunk_config
from binder.modality import ModalityConfig, ModalitySpec
from binder.registry import register_modality

log = logging.getLogger(__name__)

CONFIG_FILE = Path(__file__).with_name("tactile.yaml")
"""The ``modality=tactile`` Hydra config shipped with the package (binder's thin YAML form)."""

UNITS_TO_KPA: Dict[str, float] = {"kPa": 1.0, "Pa": 1e-3, "mbar": 0.1, "N/cm2": 10.0, "psi": 6.894757}
"""Accepted pressure units and their size in kPa."""

PRESETS: Dict[str, TrunkConfig] = {
    # binder's depth/thermal `tiny`: a conv stem (3x3 stride-2 convs 16, 32, then 128; Xiao et
    # al., NeurIPS 2021) turns 32 x 32 into 4 x 4 = 16 tokens; minutes on 2 CPU cores.
    "tiny": TrunkConfig(width=128, depth=4, heads=4, stem="conv", stem_channels=(16, 32), patch_norm=True),
    # A ViT-S-sized trunk for high-resolution (optical) sensors: 8 x 8 patches of 64 x 64 maps.
    "small": TrunkConfig(patch=(8, 8), stride=(8, 8), width=384, depth=6, heads=6, patch_norm=True),
}

GRID_SIZES: Dict[str, int] = {"tiny": 32, "small": 64}
"""Model input side of each preset (used where ``grid_size`` is null)."""


@dataclass
class TactileConfig(ModalityConfig):
    """Tactile preprocessing + encoder settings (the schema of ``modality=tactile``)."""

    modality: ClassVar[str] = "tactile"
    presets: ClassVar[Mapping[str, TrunkConfig]] = PRESETS

    # encoder + input preset: tiny (32 x 32, minutes on 2 CPU cores) | small (384 wide, 6 deep, 64 x 64)
    preset: str = "tiny"
    encoder: EncoderOverrides = field(default_factory=EncoderOverrides)  # overrides of the preset's trunk
    grid_size: Optional[int] = None  # model input side in taxels; None = the preset's (tiny 32, small 64)
    unit: str = "kPa"  # unit of the raw pressure values: kPa | Pa | mbar | N/cm2 | psi
    max_pressure: float = 100.0  # kPa mapped to 1.0; higher pressure saturates (the sensor's range)
    negative_tolerance: float = 0.0  # kPa of negative offset noise read as 0; lower values are an error
    mean: float = 0.024  # normalisation of the [0, 1] map (measured on 2000 digits-world renders, max_pressure 100)
    std: float = 0.059
    temperature: float = 0.1  # fixed InfoNCE temperature (ImageBind's value for its image-like thermal branch)
    augment: MapAugmentConfig = field(default_factory=MapAugmentConfig)  # train-time augmentation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit not in UNITS_TO_KPA:
            raise BinderConfigError(f"unknown tactile unit {self.unit!r}; expected one of {sorted(UNITS_TO_KPA)}")
        if self.max_pressure <= 0 or self.std <= 0 or self.negative_tolerance < 0:
            raise BinderConfigError("tactile config: max_pressure and std must be positive and "
                                    f"negative_tolerance >= 0, got {self.max_pressure}, {self.std}, "
                                    f"{self.negative_tolerance}")
        if self.grid_size is not None and self.grid_size < 8:
            raise BinderConfigError(f"tactile grid_size must be at least 8 taxels, got {self.grid_size}")

    @property
    def input_size(self) -> int:
        """Side of the square model input."""
        return int(self.grid_size or GRID_SIZES[self.preset])

    def trunk(self) -> TrunkConfig:
        """The preset's trunk with the ``encoder`` overrides, on (1, S, S) pressure maps."""
        return trunk_config(PRESETS[self.preset], self.encoder, 1, (self.input_size, self.input_size), "tactile")


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

def _read_npy(path: Path, name: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BinderInputError(f"{name} is not a readable .npy pressure map: {err}") from err


def _read_csv(path: Path, name: str) -> np.ndarray:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BinderInputError(f"{name} is not a readable .csv pressure map: {err}") from err
    rows = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise BinderInputError(f"{name} is empty: expected rows of comma-separated pressures")
    try:
        return np.loadtxt(rows, delimiter=",", comments="#", ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise BinderInputError(f"{name} is not a readable .csv pressure map: {err}") from err


def read_pressure_file(path: "str | Path") -> np.ndarray:
    """Read a pressure map from ``.npy`` or ``.csv`` (comma-separated rows, ``#`` comments).

    Raises:
        BinderInputError: a directory, a missing, empty or unreadable file, or another suffix.
    """
    path = Path(path).expanduser()
    name = f"tactile file {str(path)!r}"
    if path.is_dir():
        raise BinderInputError(f"{name} is a directory; expected a .npy or .csv pressure map")
    if not path.is_file():
        raise BinderInputError(f"{name} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, name)
    if suffix == ".csv":
        return _read_csv(path, name)
    raise BinderInputError(f"{name}: unsupported file type {suffix or '(none)'}; expected .npy or .csv")


def pressure_kpa(x: np.ndarray, name: str, unit: str = "kPa", negative_tolerance: float = 0.0) -> np.ndarray:
    """A validated pressure map (H, W) float32 in kPa.

    Args:
        x: Raw map, (H, W) or one channel as (1, H, W) / (H, W, 1), any real dtype.
        name: What to call the input in errors.
        unit: Unit of ``x`` (a key of :data:`UNITS_TO_KPA`).
        negative_tolerance: Negative values down to this many kPa read 0 (offset noise).

    Raises:
        BinderInputError: wrong shape, empty, a non-numeric dtype, NaN/inf or negative pressure.
    """
    x = single_channel(np.asarray(x), name)[0]
    if x.dtype.kind not in "iuf":
        raise BinderInputError(f"{name}: expected real-valued pressures, got dtype {x.dtype}")
    kpa = x.astype(np.float64) * UNITS_TO_KPA[unit]
    if not np.isfinite(kpa).all():
        raise BinderInputError(f"{name} contains {int((~np.isfinite(kpa)).sum())} NaN or infinite values")
    low = float(kpa.min())
    if low < -negative_tolerance:
        raise BinderInputError(f"{name} has negative pressure (min {low:.3g} kPa at {int((kpa < 0).sum())} taxels); "
                               "subtract the sensor's offset, or set negative_tolerance for offset noise")
    return np.clip(kpa, 0.0, None).astype(np.float32)


def pad_square(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (C, M, M), M = max(H, W): centred, zero pressure (no contact) around."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top))


class TactilePreprocessor:
    """Pressure map (file, array or tensor, kPa by default) -> normalised (1, 1, S, S)."""

    def __init__(self, cfg: TactileConfig) -> None:
        self.cfg = cfg

    def unit_range(self, item: Any) -> np.ndarray:
        """Raw input -> validated map scaled to [0, 1] by ``max_pressure`` (H, W) float32."""
        if isinstance(item, (str, Path)):
            name, x = f"tactile file {str(item)!r}", read_pressure_file(item)
        else:
            name, x = "tactile input", as_array(item, "tactile input")
        kpa = pressure_kpa(x, name, self.cfg.unit, self.cfg.negative_tolerance)
        if kpa.max() > self.cfg.max_pressure:
            log.debug("%s saturates: %.1f kPa > max_pressure %.1f kPa", name, kpa.max(), self.cfg.max_pressure)
        return np.clip(kpa / self.cfg.max_pressure, 0.0, 1.0)

    def __call__(self, item: Any, sample_rate: Optional[int] = None, train: bool = False,
                 num_clips: Optional[int] = None) -> torch.Tensor:
        """Preprocess one pressure map -> (1, 1, S, S) (one view; ``sample_rate`` is unused)."""
        x = pad_square(torch.from_numpy(self.unit_range(item))[None])  # (1, M, M)
        x = resize_center_crop(x, self.cfg.input_size, clamp=True)  # (1, S, S)
        return ((x - self.cfg.mean) / self.cfg.std)[None]  # (K=1, 1, S, S)


class TactileAugment:
    """Small affine warp (the object lands elsewhere on the pad), noise and one dead patch of
    taxels on one normalised map (1, S, S); uncovered and dead taxels read zero pressure."""

    def __init__(self, cfg: TactileConfig) -> None:
        self.aug = cfg.augment
        self.zero = (0.0 - cfg.mean) / cfg.std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return augment_map(x, self.aug, self.zero)


class TactileEncoder(Trunk):
    """Transformer over (N, 1, S, S) pressure maps (binder's :class:`~binder.layers.Trunk`)."""

    def __init__(self, cfg: TactileConfig) -> None:
        super().__init__(cfg.trunk())


def example_input() -> np.ndarray:
    """A 20 x 24 pressure map in kPa: one elliptical contact plus sensor noise."""
    rng = np.random.default_rng(0)
    v, u = np.mgrid[0:20, 0:24]
    contact = 60.0 * np.exp(-(((v - 9) / 4.0) ** 2 + ((u - 13) / 6.0) ** 2))
    return np.clip(contact + rng.normal(0.0, 0.5, contact.shape), 0.0, None).astype(np.float32)


SPEC = register_modality(ModalitySpec(
    name="tactile", config_cls=TactileConfig, preprocessor_cls=TactilePreprocessor, encoder_cls=TactileEncoder,
    augment_cls=TactileAugment, example_input=example_input, config_file=CONFIG_FILE, extensions=(".npy", ".csv"),
))
