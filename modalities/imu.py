"""IMU modality: accelerometer + gyroscope recordings and ImageBind's IMU transformer.

ImageBind (arXiv 2305.05665, appendix C; ``imagebind/models/imagebind_model.py``) feeds 5 s of
6-channel IMU (acc x/y/z, gyro x/y/z) as a 6 x 2000 array, cuts it into non-overlapping windows
of 8 samples, flattens each window channel-major into 48 values (``unfold`` then reshape:
value ``c * 8 + k`` is channel c, sample k) and embeds them with a bias-free Linear(48 -> 512)
and a LayerNorm; a CLS token, learnable positional embeddings, 6 pre-norm blocks (8 heads, drop
path 0.7), a final LayerNorm, the CLS token, dropout 0.5 and the linear head follow; the
embedding is L2-normalised and scaled by 5 (temperature 0.2); :class:`binder.layers.Trunk`
with the ``imagebind`` preset is exactly that tower. ImageBind ships no IMU loader, so reading
and resampling are binder's: arrays/tensors with a rate, CSV with timestamps (any, also
irregular, sampling: interpolated onto a uniform grid), ``.npy``/``.npz``; band-limited
resampling with ``torchaudio.functional.resample``; several clips spread over long recordings
(:mod:`binder.clips`, as audio); zero padding (in normalised units) of short ones.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from einops import rearrange

from binder.clips import POLICIES, sample_starts
from binder.config import merge_overrides
from binder.errors import BinderConfigError, BinderInputError, check_rate, existing_file, reading
from binder.layers import EncoderOverrides, Trunk, TrunkConfig, trunk_config
from binder.modality import ModalityConfig
from binder.registry import ModalitySpec, register_modality

log = logging.getLogger(__name__)

CHANNELS = 6  # acc x/y/z (m/s^2), gyro x/y/z (rad/s)
TIME_COLUMNS = ("t", "time", "times", "timestamp", "timestamps", "time_s", "seconds", "sec", "s")

PRESETS: Dict[str, TrunkConfig] = {
    # Trains in minutes on 2 CPU cores: 5 s at 50 Hz in windows of 5 samples -> 50 tokens.
    "tiny": TrunkConfig(stem="windows", patch=(5,), stride=(5,), width=128, depth=4, heads=4, drop_path=0.1,
                        patch_norm=True),
    # ImageBind's IMU trunk (imagebind_huge): 2000 samples in windows of 8 -> 250 tokens, a learned
    # key/value token, dropout 0.5 on the CLS feature, embeddings scaled by 5 after normalisation.
    "imagebind": TrunkConfig(stem="windows", patch=(8,), stride=(8,), width=512, depth=6, heads=8, drop_path=0.7,
                             dropout=0.5, patch_norm=True, bias_kv=True, logit_scale=5.0),
}


@dataclass(frozen=True)
class SignalPreset:
    """Preprocessing that goes with an encoder preset."""

    sample_rate: float  # Hz
    clip_duration: float  # seconds per clip
    mean: Tuple[float, ...]  # per-channel normalisation mean
    std: Tuple[float, ...]  # per-channel normalisation std

    @property
    def num_samples(self) -> int:
        """Samples per clip (ImageBind: 2000)."""
        return int(round(self.clip_duration * self.sample_rate))


SIGNAL_PRESETS: Dict[str, SignalPreset] = {
    # Accelerometer in g, gyroscope in rad/s: both sensors O(1).
    "tiny": SignalPreset(50.0, 5.0, (0.0,) * 6, (9.81, 9.81, 9.81, 1.0, 1.0, 1.0)),
    # ImageBind: 5 s -> 2000 samples (400 Hz); it publishes no normalisation (raw SI units).
    "imagebind": SignalPreset(400.0, 5.0, (0.0,) * 6, (1.0,) * 6),
}


@dataclass
class IMUAugmentConfig:
    """Train-time augmentation of one normalised clip (6, T); only the valid samples change."""

    rotation_deg: float = 10.0  # rotate the sensor frame (acc and gyro alike) by up to this angle
    time_stretch: float = 0.1  # stretch the valid samples by a factor in [1 - s, 1 + s]
    max_shift: float = 0.5  # delay the content by up to this many seconds (into the padding)
    noise: float = 0.02  # std of added white noise (normalised units)


@dataclass
class IMUConfig(ModalityConfig):
    """IMU preprocessing + encoder settings (the schema of ``modality=imu``)."""

    modality: ClassVar[str] = "imu"
    presets: ClassVar[Mapping[str, TrunkConfig]] = PRESETS

    preset: str = "tiny"  # encoder + signal preset: tiny (minutes on 2 CPU cores) | imagebind (6 x 2000, windows of 8)
    encoder: EncoderOverrides = field(default_factory=EncoderOverrides)  # overrides of the preset's trunk
    sample_rate: Optional[float] = None  # Hz every input is resampled to (None: tiny 50, imagebind 400)
    clip_duration: Optional[float] = None  # seconds per clip (None: 5 s, ImageBind's)
    clips_per_sample: int = 3  # clips spread over a recording at inference; embeddings are averaged
    clip_policy: str = "spread"  # spread: clips from start to end | imagebind: pytorchvideo's constant clips sampler
    mean: Optional[List[float]] = None  # per-channel mean (None: the preset's; 0)
    std: Optional[List[float]] = None  # per-channel std (None: tiny acc 9.81 gyro 1, imagebind 1)
    temperature: float = 0.2  # fixed InfoNCE temperature (ImageBind IMU)
    augment: IMUAugmentConfig = field(default_factory=IMUAugmentConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_policy not in POLICIES:
            raise BinderConfigError(f"imu clip_policy must be one of {POLICIES}, got {self.clip_policy!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != CHANNELS:
                raise BinderConfigError(f"imu {key} must list {CHANNELS} values (acc x/y/z, gyro x/y/z), got {value}")
        if self.std is not None and min(self.std) <= 0:
            raise BinderConfigError(f"imu std must be positive, got {self.std}")

    @property
    def signal(self) -> SignalPreset:
        """The preset's signal settings with this config's non-null values."""
        values = {"sample_rate": self.sample_rate, "clip_duration": self.clip_duration,
                  "mean": None if self.mean is None else tuple(self.mean),
                  "std": None if self.std is None else tuple(self.std)}
        return merge_overrides(SIGNAL_PRESETS[self.preset], values, "imu")

    @property
    def rate(self) -> float:
        """Sample rate (Hz) after preprocessing."""
        return float(self.signal.sample_rate)

    @property
    def num_samples(self) -> int:
        """Samples per clip (ImageBind: 2000)."""
        return self.signal.num_samples

    @property
    def norm(self) -> Tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std), each (6, 1) float32."""
        sig = self.signal
        return np.asarray(sig.mean, np.float32)[:, None], np.asarray(sig.std, np.float32)[:, None]

    def trunk(self) -> TrunkConfig:
        """The preset's trunk with the ``encoder`` overrides, on (6, num_samples) clips; a window
        length (``patch``) without a hop (``stride``) gives non-overlapping windows, as ImageBind."""
        overrides = merge_overrides(EncoderOverrides(), self.encoder, "imu encoder")
        if overrides.patch is not None and overrides.stride is None:
            overrides = replace(overrides, stride=overrides.patch)
        cfg = trunk_config(PRESETS[self.preset], overrides, CHANNELS, (self.num_samples,), "imu")
        if cfg.stem != "windows":
            raise BinderConfigError(f"the imu encoder has a window stem only (stem: windows), got stem {cfg.stem!r}")
        return cfg


# ----------------------------------------------------------------------------------------------
# Reading and resampling
# ----------------------------------------------------------------------------------------------

def _to_channels_first(x: Any, name: str) -> np.ndarray:
    """Array/tensor (6, T) or (T, 6) -> float32 (6, T), validated."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    if not isinstance(x, np.ndarray):
        raise BinderInputError(f"{name}: expected a file path, numpy array or tensor, got {type(x).__name__}")
    if x.dtype.kind not in "fiu":
        raise BinderInputError(f"{name}: expected float or integer samples, got dtype {x.dtype}")
    if x.ndim != 2 or CHANNELS not in x.shape:
        raise BinderInputError(
            f"{name}: expected {CHANNELS} channels (acc x/y/z, gyro x/y/z) shaped (6, T) or (T, 6), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape == (CHANNELS, CHANNELS):
        raise BinderInputError(f"{name}: shape (6, 6) is ambiguous (channels first or last?); pass more samples")
    x = x if x.shape[0] == CHANNELS else x.T
    return np.ascontiguousarray(x, dtype=np.float32)


def _ratio(rate: float, target: float) -> Tuple[int, int]:
    """``rate / target`` as a reduced fraction of integers, rates read with denominators up to 8."""
    src, dst = Fraction(rate).limit_denominator(8), Fraction(target).limit_denominator(8)
    orig, new = src.numerator * dst.denominator, dst.numerator * src.denominator
    g = math.gcd(orig, new)
    return orig // g, new // g


def resample(x: np.ndarray, rate: float, target: float) -> np.ndarray:
    """(C, T) at ``rate`` -> (C, T') at ``target`` with ``torchaudio.functional.resample``
    (band-limited sinc interpolation, anti-aliased when downsampling). A rate whose ratio to the
    target needs a huge filter bank (e.g. 99.97 -> 50 Hz) is first moved to the next integer rate
    by linear interpolation (a change of under 1%), then resampled."""
    if abs(rate - target) <= 1e-6 * target:
        return x
    wave = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    orig, new = _ratio(rate, target)
    if max(orig, new) > 1000:
        step = float(math.ceil(rate))
        size = max(1, int(math.floor((x.shape[1] - 1) * step / rate)) + 1)
        wave = F.interpolate(wave[None], size=size, mode="linear", align_corners=True)[0]
        orig, new = _ratio(step, target)
    # torchaudio pads with zeros; an IMU signal sits on gravity, so pad with the edge values
    # instead (a multiple of `orig` samples, which maps to a whole number of output samples).
    pad = orig * math.ceil(32 / orig)
    padded = F.pad(wave[None], (pad, pad), mode="replicate")[0]
    out = torchaudio.functional.resample(padded, orig, new)
    trim, length = pad * new // orig, math.ceil(wave.shape[-1] * new / orig)
    return out[..., trim : trim + length].numpy()


def _order_columns(names: List[str]) -> List[int]:
    """Indices of the 6 value columns in acc x/y/z, gyro x/y/z order when their names say so
    (acc_x, ax, gyro_x, gx, ...), else file order."""
    slots = {}
    for i, raw in enumerate(names):
        m = re.fullmatch(r"(acc\w*|a|gyr\w*|g|w|omega)[\s_.:-]*([xyz])(?:[\s_(\[].*)?", raw.strip().lower())
        if m:
            sensor = 0 if m.group(1).startswith("a") else 1
            slots[sensor * 3 + "xyz".index(m.group(2))] = i
    if sorted(slots) == list(range(CHANNELS)):
        return [slots[k] for k in range(CHANNELS)]
    return list(range(len(names)))


def read_csv(path: Path, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """CSV with a header: a time column (seconds) + 6 value columns -> (times (T,), values (6, T))."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BinderInputError(f"{name} is not a readable text CSV: {err}") from err
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise BinderInputError(f"{name} is empty: expected a header row and at least one sample row")
    delimiter = max(",;\t", key=lines[0].count)
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [h.strip().lower() for h in rows[0]]
    times = [i for i, h in enumerate(header) if h.split("(")[0].split("[")[0].strip() in TIME_COLUMNS]
    if len(times) != 1 or len(header) != CHANNELS + 1:
        raise BinderInputError(
            f"{name}: expected a header with one time column ({'/'.join(TIME_COLUMNS[:4])}, seconds) and "
            f"{CHANNELS} value columns (acc x/y/z, gyro x/y/z), got columns {rows[0]}"
        )
    try:
        table = np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float64)  # (T, 7)
    except ValueError as err:
        raise BinderInputError(f"{name}: every sample row must hold {CHANNELS + 1} numbers: {err}") from err
    if table.ndim != 2 or table.shape[1] != CHANNELS + 1:
        raise BinderInputError(f"{name}: every sample row must hold {CHANNELS + 1} numbers")
    values = [i for i in range(len(header)) if i != times[0]]
    order = [values[i] for i in _order_columns([header[i] for i in values])]
    return table[:, times[0]], table[:, order].T


def from_timestamps(t: np.ndarray, values: np.ndarray, name: str) -> Tuple[np.ndarray, float]:
    """Irregularly timed samples -> (uniform (6, T) at the median rate, rate), by interpolation."""
    if not (np.isfinite(t).all() and np.isfinite(values).all()):
        raise BinderInputError(f"{name} contains NaN or infinite values")
    if len(t) < 2:
        raise BinderInputError(f"{name}: timestamped data needs at least 2 samples, got {len(t)}")
    dt = np.diff(t)
    if (dt < 0).any():
        raise BinderInputError(f"{name}: timestamps must not decrease (seconds, in recording order)")
    keep = np.concatenate([[True], dt > 0])  # drop repeated timestamps
    t, values = t[keep], values[:, keep]
    if len(t) < 2:
        raise BinderInputError(f"{name}: all timestamps are equal")
    rate = round(8.0 / float(np.median(np.diff(t)))) / 8.0  # the median rate, to 1/8 Hz
    if rate <= 0:
        raise BinderInputError(f"{name}: samples are more than 16 s apart; expected a sampled signal")
    grid = t[0] + np.arange(int(math.floor((t[-1] - t[0]) * rate + 1e-6)) + 1) / rate
    uniform = np.stack([np.interp(grid, t, v) for v in values]).astype(np.float32)
    return uniform, rate


# ----------------------------------------------------------------------------------------------
# Preprocessor
# ----------------------------------------------------------------------------------------------

class IMUPreprocessor:
    """Raw IMU (file, array or tensor + rate) -> normalised clips (K, 6, num_samples)."""

    def __init__(self, cfg: IMUConfig) -> None:
        self.cfg = cfg
        self.mean, self.std = cfg.norm

    def read(self, path: Path, sample_rate: Optional[float]) -> Tuple[np.ndarray, Optional[float], str]:
        """Read a .csv (timestamps), .npy or .npz file -> (values (6, T), rate, name)."""
        name = f"imu file {str(path)!r}"
        existing_file(path, "imu", "a .csv, .npy or .npz file")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            t, values = read_csv(path, name)
            uniform, rate = from_timestamps(t, values, name)
            return uniform, rate, name
        if suffix not in (".npy", ".npz"):
            raise BinderInputError(f"{name}: expected a .csv (with timestamps), .npy or .npz file")
        with reading(path, "imu file", "a readable numpy file"):
            loaded = np.load(path, allow_pickle=False)
            if suffix == ".npz":
                return self._npz(loaded, sample_rate, name)
            return _to_channels_first(loaded, name), sample_rate, name

    def _npz(self, loaded: Any, sample_rate: Optional[float], name: str) -> Tuple[np.ndarray, Optional[float], str]:
        """``samples`` (6, T) with ``sample_rate`` or ``timestamps`` from an opened .npz."""
        keys = set(loaded.files)
        data_key = next((k for k in ("samples", "imu", "data") if k in keys), None)
        if data_key is None:
            raise BinderInputError(f"{name}: expected arrays 'samples' (6, T) and 'sample_rate' or 'timestamps', "
                                   f"got {sorted(keys)}")
        data = _to_channels_first(loaded[data_key], name)
        if "timestamps" in keys:
            return (*from_timestamps(np.asarray(loaded["timestamps"], np.float64), data, name), name)
        rate_key = next((k for k in ("sample_rate", "rate") if k in keys), None)
        if rate_key:
            rate = np.asarray(loaded[rate_key])
            if rate.size != 1 or rate.dtype.kind not in "fiu":
                raise BinderInputError(f"{name}: '{rate_key}' must be one number (Hz), got {rate.dtype} {rate.shape}")
            sample_rate = float(rate.reshape(-1)[0])
        return data, sample_rate, name

    def signal(self, item: Any, sample_rate: Optional[float] = None) -> np.ndarray:
        """Any accepted input -> validated, resampled, normalised (6, T) at ``cfg.rate``."""
        if isinstance(item, (str, Path)):
            data, sample_rate, name = self.read(Path(item), sample_rate)
        else:
            if isinstance(item, tuple) and len(item) == 2:
                item, sample_rate = item
            name = "imu input"
            data = _to_channels_first(item, name)
        if sample_rate is None:
            raise BinderInputError(f"{name}: IMU samples need their sample rate (pass (samples, rate) or sample_rate=)")
        if data.shape[1] == 0:
            raise BinderInputError(f"{name} is empty: expected at least one sample")
        if not np.isfinite(data).all():
            raise BinderInputError(f"{name} contains NaN or infinite values")
        rate = check_rate(sample_rate, name)
        data = resample(data, rate, self.cfg.rate)
        return (data - self.mean) / self.std

    def __call__(self, item: Any, sample_rate: Optional[float] = None, train: bool = False,
                 num_clips: Optional[int] = None) -> torch.Tensor:
        """Preprocess one recording -> (K, 6, num_samples), zero-padded (normalised units)."""
        x = self.signal(item, sample_rate)  # (6, T)
        k = num_clips or (1 if train else self.cfg.clips_per_sample)
        n = self.cfg.num_samples
        out = np.zeros((k, CHANNELS, n), dtype=np.float32)
        for i, s in enumerate(sample_starts(x.shape[1], n, k, self.cfg.clip_policy, train)):
            clip = x[:, s : s + n]
            out[i, :, : clip.shape[1]] = clip
        return torch.from_numpy(out)  # (K, 6, num_samples)


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------

def random_rotation(max_angle: float, rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix (3, 3) about a random axis by an angle up to ``max_angle`` radians."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis) + 1e-12
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


class IMUAugment:
    """Augment one normalised clip (6, T): rotate the sensor frame (acc and gyro by the same
    rotation, valid because both sensors share one frame and the zero padding is rotation
    invariant; assumes equal normalisation of the three axes of each sensor), stretch, delay
    and add noise to the valid samples; padding stays zero. Draws from torch's generator."""

    def __init__(self, cfg: IMUConfig) -> None:
        self.cfg, self.aug = cfg, cfg.augment

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, n = self.aug, x.shape[-1]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        arr = x.detach().cpu().numpy()
        valid = np.flatnonzero(np.abs(arr).max(0) > 0)
        m = int(valid[-1]) + 1 if valid.size else 0
        if m < 2:
            return x
        content = arr[:, :m]  # (6, m)
        if a.rotation_deg > 0:
            rot = random_rotation(math.radians(a.rotation_deg), rng)
            content = rearrange(rot @ rearrange(content, "(s a) t -> a (s t)", a=3), "a (s t) -> (s a) t", s=2)
        if a.time_stretch > 0:
            size = max(2, min(n, int(round(m * (1 + rng.uniform(-1, 1) * a.time_stretch)))))
            if size != m:  # (6, m) -> (6, size), linear
                content = F.interpolate(torch.from_numpy(np.ascontiguousarray(content, np.float32))[None], size=size,
                                        mode="linear", align_corners=True)[0].numpy()
        if a.noise > 0:
            content = content + rng.normal(0, a.noise, content.shape)
        room = n - content.shape[-1]
        shift = int(rng.integers(0, min(room, int(a.max_shift * self.cfg.rate)) + 1)) if room > 0 else 0
        out = np.zeros_like(arr)
        out[:, shift : shift + content.shape[-1]] = content
        return torch.from_numpy(out).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------

class IMUEncoder(Trunk):
    """Transformer over (N, 6, num_samples) IMU clips (ImageBind's IMU trunk, resizable)."""

    def __init__(self, cfg: IMUConfig) -> None:
        super().__init__(cfg.trunk())


def example_input() -> tuple:
    """Eight seconds of 6-channel IMU at 100 Hz, time-major: ``(samples (800, 6), rate)``."""
    return np.random.default_rng(0).normal(0, 1, (800, 6)).astype(np.float32), 100


SPEC = register_modality(ModalitySpec(
    name="imu", config_cls=IMUConfig, preprocessor_cls=IMUPreprocessor, encoder_cls=IMUEncoder,
    augment_cls=IMUAugment, example_input=example_input,
    extensions=(".csv", ".npy", ".npz"),
))
