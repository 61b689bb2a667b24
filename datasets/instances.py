"""Synthetic sensor views of MNIST instances: the digits world for depth, thermal, IMU and video.

Each non-audio modality X is *rendered* from one MNIST instance by a documented physical process
(the ``render`` of its :class:`~binder.registry.ModalitySpec`; binder's are
``binder.datasets.render_<modality>``), and its target image is that same instance, as in
ImageBind's naturally paired data (a depth map and the RGB frame it was captured with). The
class reaches X only through the digit's shape; the renderers randomise everything else
(pose, noise, polarity, speed) on every read, so training never sees the same X twice.

A renderer is ``render(digit, rng) -> raw item``: ``digit`` is the (28, 28) uint8 MNIST image,
``rng`` a numpy Generator, and the raw item is what the modality's preprocessor accepts from a
user (a depth map in metres, a thermal frame, an ``(samples, rate)`` IMU recording, a video
array), so evaluation runs the public ``model.embed`` path on exactly these items.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from binder.errors import BinderInputError
from binder.training.cache import target_key
from binder.types import TEXT


def item_rng(seed: int, index: int) -> np.random.Generator:
    """The fixed generator of held-out item ``index`` (same draws in every run and process)."""
    return np.random.default_rng([seed, index])


def render_fixed(render: Callable, digits: np.ndarray, seed: int) -> List[Any]:
    """Render each digit once with its fixed generator (the held-out items)."""
    return [render(d, item_rng(seed, i)) for i, d in enumerate(digits)]


class InstancePairs(Dataset):
    """(X rendered from MNIST instance i, target of instance i) pairs.

    Args:
        modality: The rendered modality X.
        digits: The split's MNIST images (N, 28, 28) uint8.
        labels: Their classes (N,).
        render: The modality's renderer.
        preprocessor: The modality's preprocessor (raw item -> (K, ...) tensor).
        target: ``image`` (the same instance, preprocessed in ``images``), ``text`` (a random
            caption of the class from ``captions`` (T, C, L)) or ``label`` (class index only).
        images: The split's anchor-preprocessed images (N, 3, H, W), for ``target='image'``.
        augment: Optional train-time augmentation of one clip of X.
        fixed: Pre-rendered raw items (held-out split); None renders afresh on every read.
        epoch_size: Pairs per epoch when rendering afresh; each read picks a random instance.
    """

    def __init__(self, modality: str, digits: np.ndarray, labels: np.ndarray, render: Callable,
                 preprocessor: Callable, target: str, images: Optional[torch.Tensor] = None,
                 captions: Optional[torch.Tensor] = None, augment: Optional[Callable] = None,
                 fixed: Optional[List[Any]] = None, epoch_size: Optional[int] = None) -> None:
        if target == "image" and images is None:
            raise BinderInputError("target='image' needs the preprocessed images of the split")
        self.modality, self.digits, self.labels = modality, digits, np.asarray(labels)
        self.render, self.preprocessor, self.target = render, preprocessor, target
        self.images, self.captions, self.augment, self.fixed = images, captions, augment, fixed
        self.epoch_size = epoch_size if fixed is None and epoch_size else len(digits)

    def __len__(self) -> int:
        return self.epoch_size

    def __getitem__(self, i: int) -> Dict[Any, Any]:
        if self.fixed is not None:
            j, x = i, self.preprocessor(self.fixed[i])  # (K, ...)
        else:
            rng = np.random.default_rng(random.getrandbits(64))
            j = int(rng.integers(len(self.digits))) if self.epoch_size != len(self.digits) else i
            x = self.preprocessor(self.render(self.digits[j], rng), train=True)  # (K, ...)
            if self.augment is not None:
                x = self.augment(x[random.randrange(x.shape[0])].clone())[None]  # (1, ...)
        label = int(self.labels[j])
        item: Dict[Any, Any] = {self.modality: x, "label": label}
        if self.target == "image":
            item[target_key(self.images)] = self.images[j]  # the image, or its cached embedding
        elif self.target == "text":
            t = random.randrange(self.captions.shape[0]) if self.fixed is None else i % self.captions.shape[0]
            item[TEXT] = self.captions[t, label]
        return item
