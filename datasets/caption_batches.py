"""The digits anchor's training data as whole batches built on tensors.

An epoch is every training MNIST instance once, padded onto the 28 x 56 canvas with a caption
of its class, plus ``composites`` fresh side-by-side pairs of two distinct instances with a pair
caption (``binder.datasets.composites``), shuffled together. Each batch is made in one go: every
digit gets its own random affine jitter (rotation, translation, zoom: the augmentation of
Radford et al.'s small-data CLIP ablations and of most MNIST recipes) through one
``affine_grid``/``grid_sample`` call, then the batch is normalised with the anchor's mean and
std. Per-image PIL transforms took a fifth of the anchor's training time on two CPU cores; this
takes about 1%. Without jitter a single digit comes out exactly as open_clip's ``longest``
resize-and-pad transform makes it (validation uses that).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from binder.datasets.composites import pair_captions, pair_label
from binder.datasets.digits import CLASSNAMES, TEMPLATES, tokenize_prompts
from binder.types import IMAGE, TEXT

SIDE = 28  # an MNIST digit is SIDE x SIDE; the canvas is SIDE x 2 * SIDE
CENTRE = slice(SIDE // 2, SIDE // 2 + SIDE)  # the columns a single digit takes, centred on the canvas


@dataclass(frozen=True)
class Jitter:
    """Random affine jitter of each digit: rotation in degrees, translation as a fraction of the
    side, zoom in [1 - scale, 1 + scale]."""

    rotate: float = 10.0
    translate: float = 0.08
    scale: float = 0.1


def random_affine(digits: torch.Tensor, jitter: Jitter, generator: torch.Generator) -> torch.Tensor:
    """Jitter each digit of (N, S, S) floats on its own (bilinear, zeros outside) -> (N, S, S)."""
    n = digits.shape[0]

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2 - 1

    angle = uniform(n) * math.radians(jitter.rotate)
    zoom = 1 + uniform(n) * jitter.scale
    shift = uniform(n, 2) * jitter.translate * 2  # grid coordinates span [-1, 1]: a side is 2 units
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, [n, 1, *digits.shape[1:]], align_corners=False)  # (N, S, S, 2)
    return F.grid_sample(digits[:, None], grid, align_corners=False)[:, 0]  # (N, S, S)


def pair_labels() -> torch.Tensor:
    """(10, 10) label of the composite of digits a and b (either order): ``pair_label`` as a table."""
    return torch.tensor([[pair_label(a, b) for b in range(10)] for a in range(10)])


class CaptionBatches(IterableDataset):
    """One epoch of anchor training batches: dicts of IMAGE (B, 3, S, 2S), TEXT (B, L), label (B,).

    Args:
        images: MNIST digits (N, S, S) uint8 of the training split.
        labels: Their classes (N,).
        captions: Token ids per (template, class) (T, 10, L).
        pair_captions: Token ids per (template, first, second) (T', 10, 10, L).
        mean, std: The anchor's per-channel normalisation (3 values each).
        batch_size: Items per batch (the last partial batch is dropped).
        composites: Side-by-side pairs per epoch.
        jitter: Random affine per digit; None: none.
        seed: The first epoch's seed; epoch e uses seed + e.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, captions: torch.Tensor, pair_captions: torch.Tensor,
                 mean: Sequence[float], std: Sequence[float], batch_size: int, composites: int = 0,
                 jitter: Optional[Jitter] = None, seed: int = 0) -> None:
        super().__init__()
        self.digits = torch.from_numpy(np.ascontiguousarray(images)).float() / 255  # (N, S, S)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.captions, self.pair_captions, self.pair_label = captions, pair_captions, pair_labels()
        self.mean, self.std = mean, std
        self.batch_size, self.composites, self.jitter = batch_size, composites, jitter
        self.seed, self.epoch = seed, 0
        if len(self.digits) < 2 and composites:
            raise ValueError("composites need at least two training digits")

    def __len__(self) -> int:
        return (len(self.digits) + self.composites) // self.batch_size

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        n, m = len(self.digits), self.composites
        first = torch.cat([torch.randperm(n, generator=gen), torch.randint(0, n, (m,), generator=gen)])
        second = torch.full((n + m,), -1, dtype=torch.long)  # -1: a single digit
        second[n:] = (first[n:] + torch.randint(1, max(2, n), (m,), generator=gen)) % n  # never the same instance
        order = torch.randperm(n + m, generator=gen)
        first, second = first[order], second[order]
        for k in range(len(self)):
            rows = slice(k * self.batch_size, (k + 1) * self.batch_size)
            yield self.batch(first[rows], second[rows], gen)

    def _digits(self, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        digits = self.digits[index]
        return random_affine(digits, self.jitter, gen) if self.jitter is not None else digits

    def batch(self, first: torch.Tensor, second: torch.Tensor, gen: torch.Generator) -> Dict[str, torch.Tensor]:
        """The batch of instance ``first`` alone (``second`` -1) or beside instance ``second``."""
        b = len(first)
        canvas = torch.zeros(b, SIDE, 2 * SIDE)  # (B, S, 2S)
        single, pair = second < 0, second >= 0
        canvas[single, :, CENTRE] = self._digits(first[single], gen)
        canvas[pair, :, :SIDE] = self._digits(first[pair], gen)
        canvas[pair, :, SIDE:] = self._digits(second[pair], gen)
        a = self.labels[first]
        labels, text = a.clone(), torch.empty(b, self.captions.shape[-1], dtype=self.captions.dtype)
        text[single] = self.captions[torch.randint(0, len(self.captions), (int(single.sum()),), generator=gen),
                                     a[single]]
        if pair.any():
            left, right = a[pair], self.labels[second[pair]]
            swap = torch.rand(len(left), generator=gen) < 0.5  # name the digits in a random order
            named = torch.where(swap, right, left), torch.where(swap, left, right)
            pick = torch.randint(0, len(self.pair_captions), (len(left),), generator=gen)
            text[pair] = self.pair_captions[pick, named[0], named[1]]
            labels[pair] = self.pair_label[left, right]
        return {IMAGE: normalise(canvas, self.mean, self.std), TEXT: text, "label": labels}


def normalise(canvas: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Grey canvases (N, S, 2S) in [0, 1] -> (N, 3, S, 2S) with the anchor's per-channel mean and std."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return (canvas[:, None] - mean_t) / torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)


def canvas_singles(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Digits (N, S, S) uint8 centred on the canvas and normalised, as open_clip's ``longest``
    transform makes them -> (N, 3, S, 2S)."""
    canvas = torch.zeros(len(images), SIDE, 2 * SIDE)
    canvas[:, :, CENTRE] = torch.from_numpy(np.ascontiguousarray(images)).float() / 255
    return normalise(canvas, mean, std)


class DigitsCaptionDataModule(L.LightningDataModule):
    """The digits anchor's data: :class:`CaptionBatches` for training; the held-out single digits
    (no jitter) with their labels for zero-shot validation."""

    def __init__(self, world: "object", tokenize: "object", preprocess_cfg: Dict, batch_size: int,
                 jitter: Optional[Jitter] = None, composites: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.world, self.tokenize, self.batch_size = world, tokenize, batch_size
        self.jitter, self.composites, self.seed = jitter, composites, seed
        self.mean, self.std = tuple(preprocess_cfg["mean"]), tuple(preprocess_cfg["std"])
        size = tuple(preprocess_cfg["size"])
        if size != (SIDE, 2 * SIDE):
            raise ValueError(f"the digits anchor's data is made for a {SIDE} x {2 * SIDE} canvas, "
                             f"not the model's {size[0]} x {size[1]} images")
        self.train_set: Optional[CaptionBatches] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        train, test = self.world.image_indices("train"), self.world.image_indices("test")
        self.train_set = CaptionBatches(
            self.world.images[train], self.world.labels[train], tokenize_prompts(self.tokenize, CLASSNAMES, TEMPLATES),
            pair_captions(self.tokenize, CLASSNAMES), self.mean, self.std, self.batch_size, self.composites,
            self.jitter, self.seed)
        self.test_images = canvas_singles(self.world.images[test], self.mean, self.std)
        self.test_labels = torch.as_tensor(self.world.labels[test], dtype=torch.long)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        pairs = torch.utils.data.TensorDataset(self.test_images, self.test_labels)
        return DataLoader(pairs, batch_size=256, collate_fn=_image_batch)


def _image_batch(items: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    images, labels = zip(*items)
    return {IMAGE: torch.stack(images), "label": torch.stack(labels)}
