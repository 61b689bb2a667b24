"""What several adapters share: reading audio from any container, published figures, id lookups."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from binder.errors import BinderInputError

IMAGEBIND = "ImageBind (Girdhar et al., CVPR 2023, arXiv 2305.05665)"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".mp4", ".mkv", ".webm", ".avi", ".mov")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
CONTAINERS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4a", ".aac", ".opus", ".m4v")


def published(metric: str, value: float, where: str = "Table 2") -> Dict[str, Any]:
    """ImageBind's published figure for ``imagebind_huge`` (what it should reproduce)."""
    return {"model": "imagebind_huge", "metric": metric, "value": value, "source": f"{IMAGEBIND}, {where}"}


def _decode_container(path: Path) -> Tuple[np.ndarray, int]:
    """The first audio stream of a media container (PyAV) -> float32 (C, T), rate."""
    import av

    with av.open(str(path)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise BinderInputError(f"media file {str(path)!r} has no audio stream")
        resampler = av.AudioResampler(format="fltp")
        parts = []
        rate = int(stream.rate or 0)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray())
                rate = int(out.sample_rate)
        for out in resampler.resample(None):
            parts.append(out.to_ndarray())
    if not parts:
        raise BinderInputError(f"media file {str(path)!r} holds no audio samples")
    return np.concatenate(parts, axis=1).astype(np.float32), rate


def read_audio(path: "str | Path") -> Tuple[np.ndarray, int]:
    """An audio file (soundfile) or the audio track of a media container (PyAV) -> (float32
    samples (C, T), rate). An empty or silent recording (every sample 0) is an error naming it:
    a silent clip scores as noise and is reported as skipped rather than counted."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise BinderInputError(f"audio file {str(path)!r} does not exist")
    try:
        if path.suffix.lower() in CONTAINERS:
            data, rate = _decode_container(path)
        else:
            raw, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (T, C)
            data = np.ascontiguousarray(raw.T)
    except BinderInputError:
        raise
    except Exception as err:
        raise BinderInputError(f"audio file {str(path)!r} is not readable audio: {type(err).__name__}: {err}") from err
    if data.shape[-1] == 0:
        raise BinderInputError(f"audio file {str(path)!r} is empty: it holds no samples")
    if not np.any(data):
        raise BinderInputError(f"audio file {str(path)!r} is silent: every sample is 0")
    return data, int(rate)


def find_stem(index: Dict[str, Path], candidates: Iterable[str]) -> Optional[Path]:
    """The first candidate stem present in a ``{stem: path}`` index."""
    for c in candidates:
        if c in index:
            return index[c]
    return None


def youtube_stems(ytid: str, start: float, end: Optional[float] = None) -> list:
    """File stems community copies of YouTube-based sets use for one segment: ``<id>``,
    ``Y<id>``, ``<id>_<start>`` (seconds as 30, 30.000, 000030 or milliseconds), ``<id>_<start>_<end>``."""
    starts = {f"{start:.3f}", f"{start:g}", f"{int(start)}", f"{int(start):06d}", f"{int(round(start * 1000))}",
              f"{start:.1f}"}
    ends = set() if end is None else {f"{end:.3f}", f"{end:g}", f"{int(end)}", f"{int(end):06d}",
                                      f"{int(round(end * 1000))}", f"{end:.1f}"}
    out = [ytid, f"Y{ytid}"]
    for s in sorted(starts):
        out += [f"{ytid}_{s}", f"Y{ytid}_{s}"]
        out += [f"{p}{ytid}_{s}_{e}" for e in sorted(ends) for p in ("", "Y")]
    return out


def display(name: str) -> str:
    """A class name from metadata as prompt text: ``_`` read as a space, whitespace squeezed."""
    return " ".join(name.replace("_", " ").split())


def load_file(path: str, modality: str) -> Any:
    """A file as a raw input of ``modality``: audio read here (so silent files are caught), other
    files handed to the model's preprocessor by path."""
    return read_audio(path) if modality == "audio" else path
