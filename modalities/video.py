"""Video modality: clips of frames seen through the frozen anchor's image tower.

Preprocessing follows ImageBind's ``imagebind/data.py`` (arXiv 2305.05665, appendix C): several
clips placed over the video (:mod:`binder.clips`; ImageBind: 5 clips of 2 s with pytorchvideo's
constant clips sampler), a few frames per clip chosen uniformly in time (ImageBind: 2), each
frame resized on its short side (bicubic, antialiased), centre-cropped to the anchor's image size
and normalised with the anchor's mean and std, read from open_clip's preprocess config. One video
becomes a tensor ``(K clips, T frames, 3, H, W)``.

Files are decoded with PyAV (``av``): torchcodec does not load here, torchvision's video
decoding is deprecated in favour of torchcodec (and ImageBind's own loader broke on a removed
torchvision module, its issue #27), while PyAV is a maintained FFmpeg binding that reads every
container FFmpeg reads (mp4, avi, webm, mkv, mov, ...), seeks to keyframes and gives each frame
its presentation timestamp, so frames are picked by time without decoding the whole file.

Two encoders (``mode``):

* ``pooled``: ImageBind's video route. Each frame goes through the frozen anchor's image tower
  and the embeddings are averaged over frames (and, by BindModel, over clips). It has no
  trainable parameters and outputs anchor-space embeddings directly (``projects_to_anchor``).
  (ImageBind inflates its image ViT with a 2-frame Conv3d patch stem instead; an open_clip
  anchor has no such stem, so frames are embedded one by one.)
* ``temporal``: the same frozen frame embeddings (no gradient reaches the anchor) feed a small
  trainable transformer over time (learnable frame positions, CLS token), whose pooled output
  BindModel projects to the anchor space with its linear head and binds to the paired image.

The anchor is attached by BindModel through ``attach_anchor`` and is held by reference only,
never as a submodule, so it is neither trained nor saved with the encoder's weights.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from timm.layers import trunc_normal_
from torch import nn

from binder.anchor import ImageConfig
from binder.clips import POLICIES, clip_starts, imagebind_clips
from binder.config import merge_overrides
from binder.errors import BinderConfigError, BinderInputError, check_rate, reading
from binder.imaging import resize_center_crop
from binder.layers import Blocks, init_weights
from binder.modality import ModalityConfig
from binder.registry import ModalitySpec, register_modality

log = logging.getLogger(__name__)

DEFAULT_IMAGE = ImageConfig()  # CLIP's 224 x 224 and mean/std, used only while no anchor is attached
VECTORISED_RESIZE = ("shortest", "longest")  # anchor resize modes done here on whole clips
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
SEEK_GAP = 2.0  # seconds: a target further ahead than this is reached by seeking, not decoding
PIXEL_GRID = 8  # without an anchor, frames are summarised by an 8 x 8 average pool (3 * 64 values)
FRAME_CHUNK = 256  # frames per anchor forward pass


@dataclass
class TemporalConfig:
    """Size of the temporal transformer over frame embeddings (``mode: temporal``)."""

    width: int = 128  # token width
    depth: int = 2  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / token width
    drop_path: float = 0.0  # stochastic depth rate at the last block (linear ramp)
    dropout: float = 0.0  # dropout on the pooled feature
    pool: str = "cls"  # pooled feature: cls | mean (average of frame tokens)


@dataclass
class TemporalOverrides:
    """``modality.video.encoder``: settings that replace the preset's (null keeps the preset's)."""

    width: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    drop_path: Optional[float] = None
    dropout: Optional[float] = None
    pool: Optional[str] = None  # cls | mean


PRESETS: Dict[str, TemporalConfig] = {
    # Trains in minutes on 2 CPU cores over a small anchor's frame embeddings.
    "tiny": TemporalConfig(width=128, depth=2, heads=4),
    # ImageBind has no temporal model (it pools frames, = mode pooled); this is binder's head for
    # a ViT-H anchor (1024-d embeddings), kept shallow since it sees only a few tokens.
    "imagebind": TemporalConfig(width=512, depth=4, heads=8, drop_path=0.1),
}


@dataclass
class VideoConfig(ModalityConfig):
    """Video preprocessing + encoder settings (the schema of ``modality=video``)."""

    modality: ClassVar[str] = "video"
    presets: ClassVar[Mapping[str, TemporalConfig]] = PRESETS

    # temporal: trainable transformer over frozen frame embeddings | pooled: frame average, no training
    mode: str = "temporal"
    preset: str = "tiny"  # temporal transformer size preset: tiny | imagebind
    encoder: TemporalOverrides = field(default_factory=TemporalOverrides)  # overrides of the preset's TemporalConfig
    clips_per_sample: int = 3  # clips per video at inference; embeddings are averaged (ImageBind: 5)
    clip_policy: str = "spread"  # spread: clips from start to end | imagebind: pytorchvideo's constant clips sampler
    frames_per_clip: int = 2  # frames per clip, uniform in time (ImageBind: 2)
    clip_duration: float = 2.0  # seconds per clip (ImageBind: 2)
    # frame rate assumed for inputs without timestamps (arrays, image lists, folders) = the digits renderer's
    fps: float = 4.0
    # 1: centre crop | 3: short side scaled, 3 crops along the long side (ImageBind's SpatialCrop)
    spatial_crops: int = 1
    # frame resize: bicubic (antialiased, like PIL) | bilinear (pytorchvideo's ShortSideScale)
    interpolation: str = "bicubic"
    temperature: float = 0.05  # fixed InfoNCE temperature

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("temporal", "pooled"):
            raise BinderConfigError(f"video mode must be 'temporal' or 'pooled', got {self.mode!r}")
        if self.spatial_crops not in (1, 3) or self.interpolation not in ("bicubic", "bilinear"):
            raise BinderConfigError(f"video spatial_crops must be 1 or 3 and interpolation bicubic or bilinear, got "
                                    f"{self.spatial_crops}, {self.interpolation!r}")
        if self.clip_policy not in POLICIES:
            raise BinderConfigError(f"video clip_policy must be one of {POLICIES}, got {self.clip_policy!r}")
        if self.clips_per_sample < 1 or self.frames_per_clip < 1 or self.clip_duration <= 0 or self.fps <= 0:
            raise BinderConfigError(
                "video clips_per_sample and frames_per_clip must be >= 1 and clip_duration, fps > 0, got "
                f"{self.clips_per_sample}, {self.frames_per_clip}, {self.clip_duration}, {self.fps}"
            )

    def temporal(self) -> TemporalConfig:
        """The preset's TemporalConfig with ``encoder`` overrides applied."""
        return merge_overrides(PRESETS[self.preset], self.encoder, "video encoder")


# ----------------------------------------------------------------------------------------------
# The anchor's image transform
# ----------------------------------------------------------------------------------------------

def frame_spec(anchor: Any) -> ImageConfig:
    """The anchor's image size, normalisation and resize, from its own preprocess config."""
    spec = anchor.image_config()
    if spec.resize_mode not in VECTORISED_RESIZE:
        log.info("the anchor resizes images with %r: video frames go through its transform one by one",
                 spec.resize_mode)
    return spec


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------

def clip_times(duration: float, fps: float, num_clips: int, frames: int, clip: float, train: bool,
               policy: str = "spread") -> np.ndarray:
    """Frame times (K, T) in seconds from the video's start.

    Clips of ``clip`` seconds (the whole video if shorter) start where :func:`binder.clips.clip_starts`
    puts them (random in training); within a clip, frames are spread uniformly from its first to
    its last frame, which is what ImageBind's uniform temporal subsampling of a clip's frames picks.
    """
    length = min(clip, duration)
    starts = clip_starts(duration, length, num_clips, policy, train)
    span = max(length - 1.0 / fps, 0.0)
    offsets = np.linspace(0.0, span, frames) if frames > 1 else np.array([span / 2])
    return starts[:, None] + offsets[None]  # (K, T)


def imagebind_frame_times(pts: np.ndarray, time_base: Fraction, start_pts: int, duration: float, num_clips: int,
                          frames: int, clip: float) -> np.ndarray:
    """Frame times (K, T) in seconds picked as ImageBind's video loader picks them: clips from
    pytorchvideo's constant clips sampler (:func:`binder.clips.imagebind_clips`), each clip's
    frames those with ``ceil(start / time_base) <= pts - start_pts < ceil(end / time_base)``
    (pytorchvideo's ``get_clip``), of which ``UniformTemporalSubsample`` keeps ``frames``
    spread from the first to the last. ``pts``: every frame's timestamp, sorted."""
    out = []
    for a, b in imagebind_clips(duration, clip, num_clips):
        lo, hi = math.ceil(a / time_base) + start_pts, math.ceil(b / time_base) + start_pts
        inside = pts[(pts >= lo) & (pts < hi)]
        if not len(inside):  # the reference finds no frame here and fails: take the nearest one
            inside = pts[[int(np.argmin(np.abs(pts - lo)))]]
        pick = torch.linspace(0, len(inside) - 1, frames).clamp(0, len(inside) - 1).long().numpy()
        out.append([float((int(p) - start_pts) * time_base) for p in inside[pick]])
    return np.asarray(out, dtype=np.float64)  # (K, T)


def _natural_key(path: Path) -> list:
    """Sort key that puts frame_2.png before frame_10.png."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", path.name)]


class _Cursor:
    """Walks a video stream in time order and returns the decoded frame nearest each target
    time, seeking to the keyframe before a target that lies far ahead."""

    def __init__(self, container: Any, stream: Any, start: float, fps: float) -> None:
        self.container, self.stream, self.start, self.fps = container, stream, start, fps
        self.frames: Any = None
        self.prev: Optional[tuple] = None
        self.next: Optional[tuple] = None
        self.count = 0

    def _pull(self) -> Optional[tuple]:
        frame = next(self.frames, None)
        if frame is None:
            return None
        self.count += 1
        t = frame.time - self.start if frame.time is not None else (self.count - 1) / self.fps
        return (frame, t)

    def _restart(self, seek_to: Optional[float]) -> None:
        if seek_to is not None:
            offset = int((seek_to + self.start) / float(self.stream.time_base))
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
        self.frames = iter(self.container.decode(self.stream))
        self.prev, self.next = None, self._pull()

    def nearest(self, t: float) -> Any:
        """The decoded frame whose timestamp is nearest ``t`` (seconds from the start)."""
        if self.frames is None:
            self._restart(t if t > SEEK_GAP else None)
        elif self.next is not None and t - self.next[1] > SEEK_GAP:
            self._restart(t)
        while self.next is not None and self.next[1] < t:
            self.prev, self.next = self.next, self._pull()
        options = [c for c in (self.prev, self.next) if c is not None]
        if not options:
            return None
        return min(options, key=lambda c: abs(c[1] - t))[0]


def _frame_pts(container: Any, stream: Any) -> tuple:
    """(every frame's pts sorted, time base, stream start pts) from a demux pass (no decoding)."""
    pts = np.sort(np.array([p.pts for p in container.demux(stream) if p.pts is not None], dtype=np.int64))
    container.seek(0)
    if not len(pts):
        raise BinderInputError("the video stream holds no timestamped frames")
    return pts, Fraction(stream.time_base), int(stream.start_time or 0)


def _stream_timing(container: Any, stream: Any) -> Tuple[float, float, float]:
    """(start, duration, fps) of a video stream from its metadata, or from a demux pass when the
    container does not record a duration."""
    tb = float(stream.time_base) if stream.time_base else 1.0
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if stream.duration:
        duration = float(stream.duration * tb)
    elif container.duration:
        duration = container.duration / av.time_base - max(start, 0.0)
    else:
        ends = [float((p.pts + (p.duration or 0)) * tb) for p in container.demux(stream) if p.pts is not None]
        duration = max(ends) - start if ends else 0.0
        container.seek(0)
    if fps <= 0:
        fps = (stream.frames / duration) if stream.frames and duration > 0 else 25.0
    return start, duration, fps


class VideoPreprocessor:
    """Raw video -> clips (K, T, 3, H, W) normalised for the anchor's image tower.

    Accepts a video file (anything FFmpeg decodes), a folder of frame images (natural sort
    order), a uint8 or float ([0, 1]) array or tensor (T, H, W, 3) (or (T, 3, H, W)), a list of
    PIL images or (H, W, 3) arrays, or ``(frames, fps)``. Inputs without timestamps are read at
    ``sample_rate`` if given, else ``cfg.fps``.
    """

    def __init__(self, cfg: VideoConfig) -> None:
        self.cfg = cfg
        self.spec = DEFAULT_IMAGE
        self.transform_one: Optional[Callable] = None  # the anchor's own per-image transform, when needed

    def attach_anchor(self, anchor: Any) -> None:
        """Take the crop size and normalisation from the frozen anchor's preprocess config."""
        self.spec = frame_spec(anchor)
        self.transform_one = anchor.preprocess_image if self.spec.resize_mode not in VECTORISED_RESIZE else None

    # -- decoding --------------------------------------------------------------------------

    def read_file(self, path: Path, times_of: Callable[..., np.ndarray]) -> np.ndarray:
        """Decode the frames nearest ``times_of(duration, fps, frame_pts)`` (K, T) -> uint8
        (K, T, H, W, 3); ``frame_pts`` (every frame's timestamp, from a demux pass) only for the
        ``imagebind`` clip policy, which picks among the frames themselves."""
        name = f"video file {str(path)!r}"
        try:
            with av.open(str(path), mode="r") as container:
                if not container.streams.video:
                    raise BinderInputError(f"{name} has no video stream")
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                start, duration, fps = _stream_timing(container, stream)
                frame_pts = _frame_pts(container, stream) if self.cfg.clip_policy == "imagebind" else None
                times = times_of(max(duration, 1.0 / fps), fps, frame_pts)
                cursor = _Cursor(container, stream, start, fps)
                picked: List[Any] = [None] * times.size
                last = None
                for i in np.argsort(times, axis=None, kind="stable"):
                    frame = cursor.nearest(float(times.flat[i]))
                    last = frame if frame is not None else last  # past the end: the last frame
                    picked[i] = last
                if any(f is None for f in picked):
                    raise BinderInputError(f"{name} has no decodable frames")
                converted: Dict[int, np.ndarray] = {}
                for f in picked:
                    if id(f) not in converted:
                        converted[id(f)] = f.to_ndarray(format="rgb24")
                arrays = [converted[id(f)] for f in picked]
        except BinderInputError:
            raise
        except Exception as err:  # FFmpeg, OS and decoder errors of every kind on corrupt files
            raise BinderInputError(f"{name} is not a readable video: {type(err).__name__}: {err}") from err
        return np.stack(arrays).reshape(*times.shape, *arrays[0].shape)

    def read_folder(self, path: Path) -> np.ndarray:
        """Frame images of a folder, in natural name order -> uint8 (N, H, W, 3)."""
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
        name = f"video frame folder {str(path)!r}"
        if not files:
            raise BinderInputError(f"{name} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        frames = []
        for f in files:
            with reading(f, f"{name}: frame", "a readable image"):
                with Image.open(f) as im:
                    frames.append(np.asarray(im.convert("RGB")))
        if len({a.shape for a in frames}) > 1:
            raise BinderInputError(f"{name}: frames differ in size {sorted({a.shape for a in frames})}; "
                                   "expected one size")
        return np.stack(frames)

    def sample(self, item: Any, sample_rate: Optional[float] = None, train: bool = False,
               num_clips: Optional[int] = None) -> np.ndarray:
        """Pick the clips' frames from any accepted input -> uint8 (K, T, H, W, 3)."""
        cfg = self.cfg
        k = num_clips or (1 if train else cfg.clips_per_sample)

        def times_of(duration: float, fps: float, frame_pts: Optional[tuple] = None) -> np.ndarray:
            if frame_pts is not None and not train:  # imagebind: pick among the frames themselves
                pts, time_base, start_pts = frame_pts
                return imagebind_frame_times(pts, time_base, start_pts, duration, k, cfg.frames_per_clip,
                                             cfg.clip_duration)
            return clip_times(duration, fps, k, cfg.frames_per_clip, cfg.clip_duration, train, cfg.clip_policy)

        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                frames, name = self.read_folder(path), f"video frame folder {str(path)!r}"
            elif path.is_file():
                return self.read_file(path, times_of)
            else:
                raise BinderInputError(f"video file {str(path)!r} does not exist")
        else:
            if isinstance(item, tuple) and len(item) == 2 and np.isscalar(item[1]):
                item, sample_rate = item
            name = "video input"
            frames = frames_to_uint8(item, name)
        fps = check_rate(sample_rate, name, "frame rate") if sample_rate is not None else cfg.fps
        index_base = (np.arange(frames.shape[0]), 1 / Fraction(fps).limit_denominator(10**6), 0)
        times = times_of(frames.shape[0] / fps, fps, index_base if cfg.clip_policy == "imagebind" else None)
        idx = np.clip(np.floor(times * fps + 0.5 + 1e-6).astype(np.int64), 0, frames.shape[0] - 1)
        return frames[idx]  # (K, T, H, W, 3)

    # -- transform -------------------------------------------------------------------------

    def transform(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 (K, T, H, W, 3) -> anchor-normalised float (K * crops, T, 3, S, S)."""
        k, t = clips.shape[:2]
        flat = clips.reshape(k * t, *clips.shape[2:])  # (K T, H, W, 3)
        spec, crops = self.spec, self.cfg.spatial_crops
        if self.transform_one is not None:
            if crops != 1:
                raise BinderConfigError("video spatial_crops=3 needs an anchor whose image transform is resize + "
                                        "crop + normalise")
            out = torch.stack([self.transform_one(Image.fromarray(f)) for f in flat]).float()[None]  # (1, K T, 3, S, S)
        else:
            x = rearrange(torch.from_numpy(np.ascontiguousarray(flat)), "n h w c -> n c h w").float() / 255.0
            if spec.resize_mode == "longest":  # fit inside the anchor's canvas, pad with its fill
                if crops != 1:
                    raise BinderConfigError("video spatial_crops=3 needs an anchor whose image transform is resize + "
                                            "crop (this one letterboxes: resize_mode='longest')")
                out = fit_and_pad(x, spec.size, spec.fill_color / 255.0)[None]  # (1, K T, 3, H, W)
            else:
                out = resize_crops(x, spec.size, crops, self.cfg.interpolation)  # (V, K T, 3, S, S)
            mean = torch.tensor(spec.mean, dtype=out.dtype)[:, None, None]
            std = torch.tensor(spec.std, dtype=out.dtype)[:, None, None]
            out = (out - mean) / std
        return rearrange(out, "v (k t) c h w -> (k v) t c h w", k=k)

    def __call__(self, item: Any, sample_rate: Optional[float] = None, train: bool = False,
                 num_clips: Optional[int] = None) -> torch.Tensor:
        """Preprocess one video -> (K, T, 3, H, W) with K = ``num_clips`` clips."""
        return self.transform(self.sample(item, sample_rate, train, num_clips))


def fit_and_pad(x: torch.Tensor, size: Tuple[int, int], fill: float) -> torch.Tensor:
    """(N, 3, h, w) in [0, 1] -> (N, 3, H, W): open_clip's ``resize_mode="longest"`` (the whole
    frame scaled to fit, bicubic, then centred on a canvas of ``fill``)."""
    h, w = x.shape[-2:]
    scale = min(size[0] / h, size[1] / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    top, left = (size[0] - nh) // 2, (size[1] - nw) // 2
    return F.pad(x, (left, size[1] - nw - left, top, size[0] - nh - top), value=fill)


def short_side_scale(x: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo's ``ShortSideScale`` (ImageBind's video resize): the short side to ``size``,
    the long one to ``floor(long / short * size)``, bilinear without antialiasing."""
    h, w = x.shape[-2:]
    new = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
    return F.interpolate(x, size=new, mode="bilinear", align_corners=False)


def resize_crops(x: torch.Tensor, size: Tuple[int, int], crops: int = 1, mode: str = "bicubic") -> torch.Tensor:
    """(N, 3, h, w) in [0, 1] -> (V, N, 3, H, W) with V = ``crops``: resize so the frame covers
    ``size`` (short side for a square crop), then a centre crop (``crops=1``) or, as ImageBind's
    ``SpatialCrop(num_crops=3)``, crops at the start, centre and end of the long side.
    ``bicubic`` is antialiased and clamped to [0, 1] like PIL; ``bilinear`` is pytorchvideo's
    ``ShortSideScale`` exactly (square crops)."""
    if mode == "bilinear" and size[0] == size[1]:
        x = short_side_scale(x, size[0])
    elif crops == 1:
        return resize_center_crop(x, size, mode, clamp=mode == "bicubic")[None]
    else:
        h, w = x.shape[-2:]
        scale = max(size[0] / h, size[1] / w)
        covering = (max(size[0], int(round(h * scale))), max(size[1], int(round(w * scale))))
        x = resize_center_crop(x, covering, mode, clamp=mode == "bicubic")  # resize only
    nh, nw = x.shape[-2:]
    dh, dw = nh - size[0], nw - size[1]
    along_h = dh > dw  # portrait: crops run down the height (ImageBind's uniform_crop)
    room = dh if along_h else dw
    offsets = [room // 2] if crops == 1 else [0, math.ceil(room / 2), room]
    views = [x[..., o : o + size[0], dw // 2 : dw // 2 + size[1]] if along_h
             else x[..., dh // 2 : dh // 2 + size[0], o : o + size[1]] for o in offsets]
    return torch.stack(views)  # (V, N, 3, H, W)


def frames_to_uint8(item: Any, name: str) -> np.ndarray:
    """An array, tensor or list of frames -> validated uint8 (T, H, W, 3)."""
    if isinstance(item, (list, tuple)):
        if not item:
            raise BinderInputError(f"{name} is an empty list: expected at least one frame")
        if all(isinstance(f, Image.Image) for f in item):
            item = [np.asarray(f.convert("RGB")) for f in item]
        shapes = {np.shape(f) for f in item}
        if len(shapes) > 1:
            raise BinderInputError(f"{name}: frames differ in shape {sorted(shapes)}; expected one (H, W, 3)")
        item = np.stack([np.asarray(f) for f in item])
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    if not isinstance(item, np.ndarray):
        raise BinderInputError(
            f"{name}: expected a file or folder path, array, tensor or list of frames, got {type(item).__name__}")
    if item.ndim == 4 and item.shape[-1] != 3 and item.shape[1] == 3:
        item = item.transpose(0, 2, 3, 1)  # (T, 3, H, W) -> (T, H, W, 3)
    if item.ndim != 4 or item.shape[-1] != 3:
        raise BinderInputError(f"{name}: expected RGB frames shaped (T, H, W, 3), got shape {tuple(item.shape)}")
    if min(item.shape[:3]) == 0:
        raise BinderInputError(f"{name} is empty: got shape {tuple(item.shape)}, expected at least one frame")
    if item.dtype == np.uint8:
        return item
    if item.dtype.kind != "f":
        raise BinderInputError(f"{name}: expected uint8 or float frames, got dtype {item.dtype}")
    if not np.isfinite(item).all():
        raise BinderInputError(f"{name} contains NaN or infinite values")
    if item.min() < -1e-3 or item.max() > 1 + 1e-3:
        raise BinderInputError(
            f"{name}: float frames must lie in [0, 1], got [{item.min():.3g}, {item.max():.3g}] (use uint8 for 0..255)")
    return (np.clip(item, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------

class VideoEncoder(nn.Module):
    """Frozen anchor frame embeddings -> pooled (``pooled``) or a temporal transformer (``temporal``).

    Input (N, T, 3, H, W) clips; ``forward_features`` gives tokens (N, T, D) for pooled or
    (N, 1 + T, width) for temporal (CLS first); ``forward_head`` pools them to (N, output_dim).
    Without an attached anchor (the encoder used on its own) a temporal encoder summarises each
    frame with a parameter-free 8 x 8 average pool instead, so it stays usable and testable.
    """

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.mode, self.frames = cfg.mode, cfg.frames_per_clip
        self.image_size: Tuple[int, int] = DEFAULT_IMAGE.size
        object.__setattr__(self, "_anchor", None)  # a plain reference: never a submodule
        self.grad_checkpointing = False
        if self.mode == "temporal":
            self._build_temporal(cfg.temporal())

    def _build_temporal(self, tc: TemporalConfig) -> None:
        if tc.pool not in ("cls", "mean"):
            raise BinderInputError(f"video encoder pool must be 'cls' or 'mean', got {tc.pool!r}")
        self.pool, self._width = tc.pool, tc.width
        self.frame_proj = nn.Linear(3 * PIXEL_GRID * PIXEL_GRID, tc.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, tc.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.frames, tc.width))
        self.blocks = Blocks(tc.width, tc.depth, tc.heads, tc.mlp_ratio, tc.drop_path)
        self.norm = nn.LayerNorm(tc.width, eps=1e-6)
        self.head_drop = nn.Dropout(tc.dropout)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)


    def attach_anchor(self, anchor: Any) -> None:
        """Use ``anchor``'s image tower for frame embeddings (held by reference, not registered)."""
        object.__setattr__(self, "_anchor", anchor)
        self.image_size = frame_spec(anchor).size
        if self.mode == "temporal" and self.frame_proj.in_features != anchor.embed_dim:
            self.frame_proj = nn.Linear(anchor.embed_dim, self._width)
            init_weights(self.frame_proj)

    @property
    def anchor(self) -> Any:
        """The attached frozen anchor (None until ``attach_anchor``)."""
        return self._anchor

    @property
    def projects_to_anchor(self) -> bool:
        """Pooled outputs are already anchor-space embeddings: BindModel adds no head."""
        return self.mode == "pooled"

    @property
    def output_dim(self) -> int:
        """Width of the pooled feature returned by :meth:`forward_head`."""
        if self.mode == "temporal":
            return self._width
        return int(self._require_anchor().embed_dim)

    @property
    def input_ndim(self) -> int:
        """Dimensions of one batch of single clips: (N, T, 3, H, W)."""
        return 5

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer block activations in backward to save memory."""
        self.grad_checkpointing = enable
        if self.mode == "temporal":
            self.blocks.grad_checkpointing = enable

    def no_weight_decay(self) -> set:
        """Parameter names excluded from weight decay (timm convention)."""
        return {"pos_embed", "cls_token"}

    def _require_anchor(self) -> Any:
        if self._anchor is None:
            raise BinderInputError("a pooled video encoder needs the frozen anchor: build it in a BindModel "
                                   "(which calls attach_anchor) or call attach_anchor(anchor)")
        return self._anchor

    def _check(self, x: torch.Tensor) -> None:
        frames_ok = x.ndim == 5 and (self.mode == "pooled" or x.shape[1] == self.frames)
        if not frames_ok or tuple(x.shape[2:]) != (3, *self.image_size):
            t = "T" if self.mode == "pooled" else str(self.frames)
            raise BinderInputError(f"expected video clips of shape (N, {t}, 3, {self.image_size[0]}, "
                             f"{self.image_size[1]}), got {tuple(x.shape)}")

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) -> per-frame features (N, T, C): frozen anchor embeddings (no gradient)."""
        self._check(x)
        frames = rearrange(x, "n t c h w -> (n t) c h w")
        anchor = self._anchor if self.mode == "temporal" else self._require_anchor()
        if anchor is None:
            feats = F.adaptive_avg_pool2d(frames, PIXEL_GRID).flatten(1)  # (N T, 3 * 64)
        else:
            dtype = next(anchor.parameters()).dtype
            with torch.no_grad():
                feats = torch.cat([anchor.encode_image(c.to(dtype)).float() for c in frames.split(FRAME_CHUNK)])
        return rearrange(feats, "(n t) d -> n t d", n=x.shape[0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) -> tokens: pooled (N, T, D) frame embeddings; temporal (N, 1 + T, width)."""
        feats = self.frame_features(x)
        if self.mode == "pooled":
            return feats
        tokens = self.frame_proj(feats)  # (N, T, width)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        tokens = self.blocks(tokens)
        return self.norm(tokens)  # (N, 1 + T, width)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        """Tokens -> pooled feature (N, output_dim)."""
        if self.mode == "pooled":
            return F.normalize(x, dim=-1).mean(1)  # average of the frames' unit embeddings
        return self.head_drop(x[:, 0] if self.pool == "cls" else x[:, 1:].mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def example_input() -> np.ndarray:
    """Six seconds of 36 x 40 RGB frames at 4 fps, uint8 (T, H, W, 3)."""
    return np.random.default_rng(0).integers(0, 256, (24, 36, 40, 3), dtype=np.uint8)


SPEC = register_modality(ModalitySpec(
    name="video", config_cls=VideoConfig, preprocessor_cls=VideoPreprocessor, encoder_cls=VideoEncoder,
    example_input=example_input,
    extensions=(".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"),
))
