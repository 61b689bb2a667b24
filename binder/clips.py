"""Where the clips of a long recording start (audio, IMU and video share this).

Several fixed-length clips are cut from a recording and their embeddings averaged (ImageBind,
arXiv 2305.05665: 3 clips of 2 s for audio, 5 for video). Two placements:

* ``spread`` (binder's default): the clips cover the recording from its start to its very end,
  ``linspace(0, room, clips)`` (one clip: centred), with ``room = length - clip``;
* ``imagebind``: pytorchvideo's ``ConstantClipsPerVideoSampler`` as ImageBind's ``data.py`` uses
  it: clip ``i`` starts at ``i * room / clips`` (divided by the number of clips, so the last clip
  does not reach the end).

In training one clip (or several) starts uniformly at random in ``[0, room]``.
"""
from __future__ import annotations

from typing import Optional

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
