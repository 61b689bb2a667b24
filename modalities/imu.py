"""IMU modality: accelerometer + gyroscope recordings and ImageBind's IMU transformer.

ImageBind (arXiv 2305.05665, appendix C; ``imagebind/models/imagebind_model.py``) feeds 5 s of
6-channel IMU (acc x/y/z, gyro x/y/z) as a 6 x 2000 array, cuts it into non-overlapping windows
of 8 samples, flattens each window channel-major into 48 values (``unfold`` then reshape:
value ``c * 8 + k`` is channel c, sample k) and embeds them with a bias-free Linear(48 -> 512)
and a LayerNorm; a CLS token, learnable positional embeddings, 6 pre-norm blocks (8 heads, drop
path 0.7), a final LayerNorm, the CLS token, dropout 0.5 and the linear head follow; the
embedding is L2-normalised and scaled by 5 (temperature 0.2). ImageBind ships no IMU loader,
so reading and resampling are binder's: arrays/tensors with a rate, CSV with timestamps (any,
also irregular, sampling: interpolated onto a uniform grid), ``.npy``/``.npz``; a windowed-sinc
low-pass before downsampling; several clips spread over long recordings (as audio); zero
padding (in normalised units) of short ones.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from einops import rearrange
from torch import nn

from binder.errors import BinderInputError
from binder.layers import PatchViT, ViTConfig, init_vit_weights, vit_overrides
from binder.registry import ModalitySpec, register_modality
from binder.types import Modality

log = logging.getLogger(__name__)

CHANNELS = 6  # acc x/y/z (m/s^2), gyro x/y/z (rad/s)
TIME_COLUMNS = ("t", "time", "times", "timestamp", "timestamps", "time_s", "seconds", "sec", "s")

PRESETS: Dict[str, ViTConfig] = {
    # Trains in minutes on 2 CPU cores: 5 s at 50 Hz in windows of 5 samples -> 50 tokens.
    "tiny": ViTConfig(patch=(1, 5), stride=(1, 5), width=128, depth=4, heads=4, drop_path=0.1,
                      patch_norm=True),
    # ImageBind's IMU trunk (imagebind_huge): 2000 samples in windows of 8 -> 250 tokens.
    "imagebind": ViTConfig(patch=(1, 8), stride=(1, 8), width=512, depth=6, heads=8, drop_path=0.7,
                           dropout=0.5, patch_norm=True),
}


@dataclass(frozen=True)
class SignalPreset:
    """Preprocessing that goes with an encoder preset."""

    sample_rate: float  # Hz
    clip_duration: float  # seconds per clip
    mean: Tuple[float, ...]  # per-channel normalisation mean
    std: Tuple[float, ...]  # per-channel normalisation std


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
class IMUConfig:
    """IMU preprocessing + encoder settings; mirrored by configs/modality/imu.yaml."""

    name: str = "imu"  # modality name (registry key)
    preset: str = "tiny"  # encoder + signal preset: tiny | imagebind
    encoder: Dict[str, Any] = field(  # overrides of the preset's ViTConfig (None = keep the preset's)
        default_factory=lambda: {name: None for name in ViTConfig.__dataclass_fields__})
    sample_rate: Optional[float] = None  # Hz every input is resampled to (None: tiny 50, imagebind 400)
    clip_duration: Optional[float] = None  # seconds per clip (None: 5 s, ImageBind's)
    clips_per_sample: int = 3  # clips spread over a recording at inference; embeddings are averaged
    mean: Optional[List[float]] = None  # per-channel mean (None: the preset's; 0)
    std: Optional[List[float]] = None  # per-channel std (None: tiny acc 9.81 gyro 1, imagebind 1)
    temperature: float = 0.2  # fixed InfoNCE temperature (ImageBind IMU)
    augment: IMUAugmentConfig = field(default_factory=IMUAugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = IMUAugmentConfig(**self.augment)
        if self.preset not in PRESETS:
            raise BinderInputError(f"unknown imu preset {self.preset!r}; expected one of {sorted(PRESETS)}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != CHANNELS:
                raise BinderInputError(f"imu {key} must list {CHANNELS} values (acc x/y/z, gyro x/y/z), got {value}")
        if self.std is not None and min(self.std) <= 0:
            raise BinderInputError(f"imu std must be positive, got {self.std}")

    @property
    def rate(self) -> float:
        """Sample rate (Hz) after preprocessing."""
        return float(self.sample_rate or SIGNAL_PRESETS[self.preset].sample_rate)

    @property
    def num_samples(self) -> int:
        """Samples per clip (ImageBind: 2000)."""
        duration = self.clip_duration or SIGNAL_PRESETS[self.preset].clip_duration
        return int(round(duration * self.rate))

    @property
    def norm(self) -> Tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std), each (6, 1) float32."""
        sig = SIGNAL_PRESETS[self.preset]
        mean = np.asarray(self.mean if self.mean is not None else sig.mean, dtype=np.float32)
        std = np.asarray(self.std if self.std is not None else sig.std, dtype=np.float32)
        return mean[:, None], std[:, None]

    def vit(self) -> ViTConfig:
        """The preset's ViTConfig with ``encoder`` overrides; ``patch``/``stride`` may be window
        lengths in samples (an int or [1, n])."""
        overrides = vit_overrides(self.encoder, "imu")
        for key in ("patch", "stride"):
            if key in overrides:
                v = overrides[key]
                overrides[key] = (1, int(v)) if isinstance(v, (int, float)) else (1, int(list(v)[-1]))
        if "patch" in overrides and "stride" not in overrides:
            overrides["stride"] = overrides["patch"]  # non-overlapping windows, as ImageBind
        cfg = ViTConfig(**{**asdict(PRESETS[self.preset]), **overrides})
        if cfg.stem != "patch":
            raise BinderInputError(f"the imu encoder has a window stem only (stem: patch), got stem {cfg.stem!r}")
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


def _lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    """Hann-windowed sinc low-pass along the last axis; ``cutoff`` in cycles per sample (< 0.5)."""
    half = int(math.ceil(2.0 / cutoff))
    n = np.arange(-half, half + 1)
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(2 * half + 3)[1:-1]
    taps /= taps.sum()
    padded = np.pad(x, ((0, 0), (half, half)), mode="reflect" if x.shape[1] > half else "edge")
    return np.stack([np.convolve(row, taps, mode="valid") for row in padded])


def resample(x: np.ndarray, rate: float, target: float) -> np.ndarray:
    """(C, T) at ``rate`` -> (C, T') at ``target`` by linear interpolation, low-passed first
    when downsampling (cutoff at 0.9 x the new Nyquist)."""
    if abs(rate - target) <= 1e-6 * target:
        return x
    if target < rate:
        x = _lowpass(x, 0.45 * target / rate)
    n_out = max(1, int(math.floor((x.shape[1] - 1) * target / rate)) + 1)
    pos = np.arange(n_out) * (rate / target)  # output times in input samples
    lo = np.minimum(pos.astype(np.int64), x.shape[1] - 1)
    hi = np.minimum(lo + 1, x.shape[1] - 1)
    frac = (pos - lo).astype(np.float32)
    return x[:, lo] * (1 - frac) + x[:, hi] * frac


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
    rate = 1.0 / float(np.median(np.diff(t)))
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
        if not path.is_file():
            raise BinderInputError(f"{name} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            t, values = read_csv(path, name)
            uniform, rate = from_timestamps(t, values, name)
            return uniform, rate, name
        if suffix not in (".npy", ".npz"):
            raise BinderInputError(f"{name}: expected a .csv (with timestamps), .npy or .npz file")
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as err:
            raise BinderInputError(f"{name} is not a readable numpy file: {err}") from err
        if suffix == ".npz":
            keys = set(loaded.files)
            data_key = next((k for k in ("samples", "imu", "data") if k in keys), None)
            if data_key is None:
                raise BinderInputError(f"{name}: expected arrays 'samples' (6, T) and 'sample_rate' or 'timestamps', got {sorted(keys)}")
            data = _to_channels_first(loaded[data_key], name)
            if "timestamps" in keys:
                return (*from_timestamps(np.asarray(loaded["timestamps"], np.float64), data, name), name)
            rate_key = next((k for k in ("sample_rate", "rate") if k in keys), None)
            sample_rate = float(loaded[rate_key]) if rate_key else sample_rate
            loaded = data
        return _to_channels_first(loaded, name), sample_rate, name

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
        try:
            rate = float(sample_rate)
        except (TypeError, ValueError):
            rate = float("nan")
        if not (math.isfinite(rate) and rate > 0):
            raise BinderInputError(f"{name}: sample rate must be a positive number of Hz, got {sample_rate!r}")
        data = resample(data, rate, self.cfg.rate)
        return (data - self.mean) / self.std

    def clip_starts(self, num_samples: int, num_clips: int, train: bool) -> List[int]:
        """Clip offsets: one random clip in training, else ``num_clips`` evenly spaced."""
        room = max(num_samples - self.cfg.num_samples, 0)
        if train:
            return [int(torch.randint(0, room + 1, ()).item()) for _ in range(num_clips)]
        if num_clips == 1:
            return [room // 2]
        return [int(round(room * i / (num_clips - 1))) for i in range(num_clips)]

    def __call__(self, item: Any, sample_rate: Optional[float] = None, train: bool = False,
                 num_clips: Optional[int] = None) -> torch.Tensor:
        """Preprocess one recording -> (K, 6, num_samples), zero-padded (normalised units)."""
        x = self.signal(item, sample_rate)  # (6, T)
        k = num_clips or (1 if train else self.cfg.clips_per_sample)
        n = self.cfg.num_samples
        out = np.zeros((k, CHANNELS, n), dtype=np.float32)
        for i, s in enumerate(self.clip_starts(x.shape[1], k, train)):
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
            content = resample(content, float(m - 1), float(size - 1)) if size != m else content
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

class WindowEmbed(nn.Module):
    """ImageBind's IMU stem: windows of ``window`` samples (hop ``hop``) of all channels, flattened
    channel-major (value ``c * window + k``), -> bias-free Linear to ``width``.

    Takes and returns PatchViT's layout: (N, C, 1, T) -> (N, D, 1, S)."""

    def __init__(self, in_chans: int, window: int, hop: int, width: int) -> None:
        super().__init__()
        self.window, self.hop = window, hop
        self.proj = nn.Linear(in_chans * window, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows = x[:, :, 0].unfold(-1, self.window, self.hop)  # (N, C, S, window)
        tokens = self.proj(rearrange(windows, "n c s w -> n s (c w)"))  # (N, S, D)
        return rearrange(tokens, "n s d -> n d 1 s")


class IMUEncoder(PatchViT):
    """Transformer over (N, 6, num_samples) IMU clips (ImageBind's IMU trunk, resizable)."""

    def __init__(self, cfg: IMUConfig) -> None:
        vit = cfg.vit()
        super().__init__(vit, in_chans=CHANNELS, input_size=(1, cfg.num_samples))
        self.num_samples = cfg.num_samples
        self.patch_embed = WindowEmbed(CHANNELS, int(vit.patch[-1]), int(vit.stride[-1]), vit.width)
        self.patch_embed.apply(init_vit_weights)

    @property
    def input_ndim(self) -> int:
        """Dimensions of one batch of single clips: (N, 6, T)."""
        return 3

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 6, T) -> normalised tokens (N, 1 + S, D), CLS first."""
        if x.ndim != 3 or x.shape[1:] != (CHANNELS, self.num_samples):
            raise ValueError(f"expected IMU input of shape (N, {CHANNELS}, {self.num_samples}), got {tuple(x.shape)}")
        return super().forward_features(x[:, :, None])  # (N, 6, 1, T)


SPEC = register_modality(
    ModalitySpec(
        modality=Modality.IMU,
        config_cls=IMUConfig,
        preprocessor_cls=IMUPreprocessor,
        encoder_cls=IMUEncoder,
        augment_cls=IMUAugment,
    )
)
