"""Where the clips of a long recording start (audio, IMU and video share this).

Several fixed-length clips are cut from a recording and their embeddings averaged (ImageBind,
arXiv 2305.05665: 3 clips of 2 s for audio, 5 for video). Two placements:

* ``spread`` (binder's default): the clips cover the recording from its start to its very end,
  ``linspace(0, room, clips)`` (one clip: centred), with ``room = length - clip``;
* ``imagebind``: pytorchvideo's ``ConstantClipsPerVideoSampler`` as ImageBind's ``data.py`` uses
  it: clip ``i`` starts at ``i * room / clips`` (divided by the number of clips, so the last clip
  does not reach the end), in exact fractions of the float duration, and ends at ``start +
  clip`` even past the end of the recording; :func:`imagebind_ranges` cuts samples as ImageBind
  does, ``int(start * rate) : int(end * rate)``.

In training one clip (or several) starts uniformly at random in ``[0, room]``.
"""
from __future__ import annotations

from fractions import Fraction
from typing import List, Optional, Tuple

import numpy as np
import torch

POLICIES = ("spread", "imagebind")


def clip_starts(length: float, clip: float, num_clips: int, policy: str = "spread", train: bool = False,
                generator: Optional[torch.Generator] = None) -> np.ndarray:
    """Start positions (float64, same unit as ``length`` and ``clip``) of ``num_clips`` clips."""
    if policy not in POLICIES:
        raise ValueError(f"clip policy must be one of {POLICIES}, got {policy!r}")
    room = max(float(length) - float(clip), 0.0)
    if train:
        return torch.rand(num_clips, dtype=torch.float64, generator=generator).numpy() * room
    if policy == "imagebind":
        return np.arange(num_clips, dtype=np.float64) * room / num_clips
    if num_clips == 1:
        return np.array([room / 2])
    return np.linspace(0.0, room, num_clips)


def sample_starts(num_samples: int, clip_samples: int, num_clips: int, policy: str = "spread",
                  train: bool = False) -> list:
    """:func:`clip_starts` in whole samples (audio, IMU). Random starts are drawn as integers."""
    room = max(num_samples - clip_samples, 0)
    if train:
        return [int(torch.randint(0, room + 1, ()).item()) for _ in range(num_clips)]
    if policy == "spread" and num_clips == 1:
        return [room // 2]
    return [int(round(s)) for s in clip_starts(num_samples, clip_samples, num_clips, policy)]


def imagebind_clips(duration: float, clip: float, num_clips: int) -> List[Tuple[Fraction, Fraction]]:
    """(start, end) seconds of each clip, computed as pytorchvideo 0.1.5's
    ``ConstantClipsPerVideoSampler`` does (exact fractions of the float ``duration``)."""
    clip_f = Fraction(clip)
    room = Fraction(max(duration - clip_f, 0))
    step = Fraction(room, num_clips)
    return [(step * i, step * i + clip_f) for i in range(num_clips)]


def imagebind_ranges(num_samples: int, rate: int, clip: float, num_clips: int) -> List[Tuple[int, int]]:
    """Sample ranges ``[a, b)`` of ImageBind's audio clips: ``int(start * rate) : int(end * rate)``
    over a recording of ``num_samples`` at ``rate`` (``b`` may pass the end: the slice stops there)."""
    return [(int(a * rate), int(b * rate)) for a, b in imagebind_clips(num_samples / rate, clip, num_clips)]
