"""Write a manifest of (MNIST image, tactile pressure map) pairs for ``data=manifest``.

Each MNIST instance gives both sides of a pair, as in binder's digits world: its image (a 28 x 28
PNG, what the anchor sees) and the pressure map of that digit pressed as a stamp onto a taxel
grid (:func:`binder_tactile.digits.render`, saved as ``.npy`` in kPa). ::

    python make_pairs.py --out DIR --n 400          # MNIST from --data-root or $BINDER_DATA

writes ``DIR/images/*.png``, ``DIR/tactile/*.npy`` and ``DIR/pairs.csv`` with the columns
``image,tactile,label`` (paths relative to ``DIR``; ``label`` is the digit 0-9, so train with
``data.classnames=[zero,one,two,three,four,five,six,seven,eight,nine]``).
"""
from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from binder.datasets.mnist import load_mnist
from binder.datasets.paths import data_root
from binder.errors import BinderInputError

log = logging.getLogger("make_pairs")

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
"""Names of the integer labels, in order (``data.classnames``)."""


def write_pairs(out: "str | Path", n: int, root: "str | Path | None" = None, first: int = 0, seed: int = 0,
                split: str = "t10k") -> Path:
    """Render ``n`` MNIST instances (``first`` onwards) as image/tactile pairs under ``out``.

    Args:
        out: Output folder (created).
        n: Number of pairs.
        root: Data root holding ``mnist/``; None -> ``$BINDER_DATA`` (binder's data-root rules).
        first: Index of the first MNIST instance used.
        seed: Seed of the renders (pair ``i`` uses the generator ``[seed, first + i]``).
        split: MNIST IDX files to read (``t10k`` or ``train``).

    Returns:
        The manifest ``out/pairs.csv``.

    Raises:
        BinderInputError: no MNIST data, or ``n`` / ``first`` outside the split.
    """
    from binder_tactile.digits import render

    images, labels = load_mnist(data_root(str(root) if root else None) / "mnist", split)
    if n < 1 or first < 0 or first + n > len(images):
        raise BinderInputError(f"need 1 <= n and first + n <= {len(images)} MNIST instances, got n={n}, first={first}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "tactile").mkdir(exist_ok=True)
    rows = []
    for index in range(first, first + n):
        image, tactile = f"images/{index:05d}.png", f"tactile/{index:05d}.npy"
        Image.fromarray(images[index], mode="L").save(out / image)
        np.save(out / tactile, render(images[index], np.random.default_rng([seed, index])))
        rows.append({"image": image, "tactile": tactile, "label": int(labels[index])})
    manifest = out / "pairs.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "tactile", "label"])
        writer.writeheader()
        writer.writerows(rows)
    log.info("wrote %d pairs to %s", n, manifest)
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: ``python make_pairs.py --out DIR [--n 400] [--data-root ROOT]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (pairs.csv, images/, tactile/)")
    parser.add_argument("--n", type=int, default=400, help="number of pairs (default 400)")
    parser.add_argument("--data-root", default=None, help="folder holding mnist/ (default $BINDER_DATA)")
    parser.add_argument("--first", type=int, default=0, help="first MNIST instance (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tactile renders (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write_pairs(args.out, args.n, args.data_root, args.first, args.seed)
    except BinderInputError as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
