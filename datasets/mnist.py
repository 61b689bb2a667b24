"""Reader for MNIST's IDX files (LeCun, Cortes, Burges), gzip-compressed or raw."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Tuple

import numpy as np

from binder.errors import BinderInputError

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def read_idx(path: "str | Path") -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a uint8 array."""
    path = Path(path)
    if not path.is_file():
        raise BinderInputError(f"MNIST file {str(path)!r} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise BinderInputError(f"MNIST file {str(path)!r} is not readable: {err}") from err
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise BinderInputError(f"MNIST file {str(path)!r} has magic {magic}, expected 2051 or 2049")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise BinderInputError(f"MNIST file {str(path)!r} is truncated: expected {dims}")
    return data.reshape(dims)


def load_mnist(root: "str | Path", split: str = "t10k") -> Tuple[np.ndarray, np.ndarray]:
    """Load ``{split}-images-idx3-ubyte(.gz)`` and labels -> (images (N, 28, 28), labels (N,))."""
    root = Path(root)

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (root / name).is_file():
                return root / name
        raise BinderInputError(f"MNIST file {stem}(.gz) not found in {str(root)!r}")

    images = read_idx(find(f"{split}-images-idx3-ubyte"))
    labels = read_idx(find(f"{split}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise BinderInputError(f"MNIST in {str(root)!r}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)
