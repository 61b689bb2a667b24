"""Composite images of the digits world: two MNIST digits side by side on a 28 x 56 canvas.

They make embedding arithmetic measurable. The offline anchor is trained on them next to the
single digits, with captions such as ``the digits 3 and 7.``. The arithmetic benchmark
(``binder.recipes.arithmetic``) then asks for an image of one digit plus the sound of another
and counts the retrieved composites that hold both. A composite's order is random and it never
uses the same MNIST instance twice. Its class is the *unordered* pair of its digits: a label of
``10 + p``, where ``p`` indexes the 55 pairs ``a <= b``, after the ten single-digit labels.
"""
from __future__ import annotations

from itertools import combinations_with_replacement
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch


PAIRS: List[Tuple[int, int]] = list(combinations_with_replacement(range(10), 2))  # 55 unordered pairs a <= b
PAIR_INDEX: Dict[Tuple[int, int], int] = {p: i for i, p in enumerate(PAIRS)}

PAIR_TEMPLATES = [
    "the digits {} and {}.",
    "a {} and a {} side by side.",
    "the numbers {} and {}.",
    "two handwritten digits, {} and {}.",
    "a picture of the digits {} and {}.",
    "a {} next to a {}.",
    "a scan of the digits {} and {}.",
    "the handwritten numbers {} and {}.",
]


def label_digits() -> torch.Tensor:
    """(10 + 55, 10) multi-hot: the digits each label holds (a single digit, or a pair)."""
    table = torch.zeros(10 + len(PAIRS), 10)
    table[torch.arange(10), torch.arange(10)] = 1
    for i, (a, b) in enumerate(PAIRS):
        table[10 + i, [a, b]] = 1
    return table


def pair_label(a: int, b: int) -> int:
    """The class of a composite of digits ``a`` and ``b`` (either order): 10 + pair index."""
    return 10 + PAIR_INDEX[(min(a, b), max(a, b))]


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (28, 28) uint8 digits -> one (28, 56) uint8 canvas."""
    return np.concatenate([left, right], axis=1)


def pair_captions(tokenize: Callable, classnames: Sequence[str]) -> torch.Tensor:
    """Token ids of every template for every ordered pair of class names -> (T, 10, 10, L)."""
    rows = []
    for template in PAIR_TEMPLATES:
        rows.append(torch.stack([tokenize([template.format(classnames[a], classnames[b]) for b in range(10)])
                                 for a in range(10)]))
    return torch.stack(rows)


def composite_gallery(labels: np.ndarray, indices: np.ndarray, per_pair: int, seed: int) -> List[Tuple[int, int]]:
    """Instance pairs (left, right) for a gallery: ``per_pair`` composites of every unordered pair
    of *distinct* digits (so never one instance twice), instances drawn from ``indices``, random order.

    Raises:
        ValueError: ``indices`` lacks some digit.
    """
    rng = np.random.default_rng(seed)
    pools = {d: indices[labels[indices] == d] for d in range(10)}
    empty = [d for d, pool in pools.items() if not len(pool)]
    if empty:
        raise ValueError(f"no instance of digit(s) {empty} to build composites from")
    out = []
    for a, b in combinations_with_replacement(range(10), 2):
        for _ in range(per_pair if a != b else 0):
            i, j = int(rng.choice(pools[a])), int(rng.choice(pools[b]))
            out.append((i, j) if rng.random() < 0.5 else (j, i))
    return out
