"""What gets indexed: files, folders or a manifest, read and embedded in bulk.

Items are files (each with its metadata), gathered from paths of files, folders (searched
recursively for the modality's file types) or a manifest (CSV or JSON Lines with a ``path``
column, relative paths resolved against the manifest's folder, every other column kept as
metadata; for ``text``, a ``text`` column). Bulk embedding reads and preprocesses the files in
DataLoader worker processes, embeds batches in the main one, and skips files that cannot be read,
keeping each with its reason: nothing is lost silently and the rest is still embedded.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from binder.errors import BinderError, BinderInputError
from binder.logs import progress
from binder.registry import get_modality
from binder.types import IMAGE, TEXT, modality_name

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Item:
    """One thing to index: its ``path`` (for text: the text) and metadata columns."""

    path: str
    meta: Dict[str, Any] = field(default_factory=dict)

    def row(self) -> Dict[str, Any]:
        return {"path": self.path, **self.meta}


@dataclass
class EmbedReport:
    """What bulk embedding did: vectors for ``items`` (in order), the ``skipped`` with reasons."""

    items: List[Item]
    vectors: np.ndarray
    skipped: List[Tuple[str, str]]

    @property
    def count(self) -> int:
        return len(self.items)


def extensions(modality: str) -> Tuple[str, ...]:
    """File suffixes that hold ``modality`` (empty: every file)."""
    if modality == IMAGE:
        return IMAGE_EXTENSIONS
    return get_modality(modality).extensions


def gather(sources: "str | os.PathLike | Iterable[Any]", modality: str) -> List[Item]:
    """Items from a file, a folder, a manifest, or a list of any of them (or of :class:`Item`).

    Raises:
        BinderInputError: a path that does not exist, a malformed manifest, or nothing to index.
    """
    modality = modality_name(modality)
    if isinstance(sources, (str, os.PathLike, Item)):
        sources = [sources]
    items: List[Item] = []
    for source in sources:
        if isinstance(source, Item):
            items.append(source)
            continue
        path = Path(source).expanduser()
        if modality == TEXT and path.suffix.lower() not in MANIFEST_SUFFIXES:
            items.append(Item(str(source)))  # text is indexed as given
        elif path.is_dir():
            items += _folder(path, modality)
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            items += read_manifest(path, modality)
        elif path.exists():
            items.append(Item(str(path.absolute())))
        else:
            raise BinderInputError(f"{str(source)!r} does not exist: give {modality} files, folders or a manifest "
                                   "(.csv / .jsonl with a path column)")
    if not items:
        raise BinderInputError(f"nothing to index in {[str(s) for s in sources]}: no {modality} files "
                               f"({', '.join(extensions(modality)) or 'any suffix'}) found")
    return items


def _folder(root: Path, modality: str) -> List[Item]:
    """Files of ``modality`` under ``root``, sorted; metadata ``folder``: the parent, relative to root."""
    suffixes = extensions(modality)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and (not suffixes or p.suffix.lower() in suffixes))
    return [Item(str(p.absolute()), {"folder": str(p.parent.relative_to(root))}) for p in files]


def read_manifest(path: Path, modality: str) -> List[Item]:
    """Rows of a CSV (header) or JSON Lines manifest -> items; numbers in CSV cells become numbers."""
    key = "text" if modality == TEXT else "path"
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    items = []
    for line, row in rows:
        value = row.pop(key, None)
        if value in (None, ""):
            raise BinderInputError(f"manifest {str(path)!r} line {line}: no {key!r} value (columns: {sorted(row)})")
        if key == "path":
            value = Path(str(value)).expanduser()
            value = str(value if value.is_absolute() else (path.parent / value).absolute())
        items.append(Item(str(value), {k: v for k, v in row.items() if k not in ("id", "path")}))
    return items


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _csv_rows(path: Path) -> List[Tuple[int, Dict[str, Any]]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise BinderInputError(f"manifest {str(path)!r} is empty: expected a header row with a path column")
            return [(i + 2, {k: _number(v) for k, v in row.items() if k is not None}) for i, row in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise BinderInputError(f"manifest {str(path)!r} is not a readable UTF-8 CSV file: {err}") from None


def _jsonl_rows(path: Path) -> List[Tuple[int, Dict[str, Any]]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise BinderInputError(f"manifest {str(path)!r} is not UTF-8 text: {err}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BinderInputError(f"manifest {str(path)!r} line {i} is not JSON: {err}") from None
        if not isinstance(row, dict):
            raise BinderInputError(f"manifest {str(path)!r} line {i} must be a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


# ----------------------------------------------------------------------------------------------
# Bulk embedding
# ----------------------------------------------------------------------------------------------

class _Preprocessed(Dataset):
    """Item i -> (i, model tensor) or (i, reason) when it cannot be read."""

    def __init__(self, items: Sequence[Item], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tuple[int, Any]:
        try:
            x = self.preprocess(self.items[i].path)
        except BinderError as err:
            return i, str(err)
        except Exception as err:  # a decoder's own error: report it, keep going
            return i, f"{type(err).__name__}: {err}"
        if not torch.isfinite(x).all():
            return i, "preprocessing gave NaN or infinite values"
        return i, x


def _collate(batch: List[Tuple[int, Any]]) -> Tuple[List[int], Optional[torch.Tensor], List[Tuple[int, str]]]:
    good = [(i, x) for i, x in batch if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in batch if not isinstance(x, torch.Tensor)]
    shapes = {tuple(x.shape) for _, x in good}
    if len(shapes) > 1:  # a preprocessor with variable output: keep the most common shape, report the rest
        common = max(shapes, key=lambda s: sum(tuple(x.shape) == s for _, x in good))
        bad += [(i, f"preprocessed to shape {tuple(x.shape)}, the batch has {common}") for i, x in good
                if tuple(x.shape) != common]
        good = [(i, x) for i, x in good if tuple(x.shape) == common]
    return [i for i, _ in good], torch.stack([x for _, x in good]) if good else None, bad


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the main process for cores


def _embed_batches(model: Any, modality: str, loader: DataLoader, show_progress: bool, items: Sequence[Item],
                   order: List[int], parts: List[np.ndarray], skipped: List[Tuple[str, str]]) -> None:
    """Embed the loader's batches, appending kept item indices, (b, D) vectors and skips in place."""
    for idx, x, bad in progress(loader, f"embed {modality}", enabled=show_progress, unit="batch"):
        skipped += [(items[i].path, reason) for i, reason in bad]
        if x is None:
            continue
        z = model.encode(modality, x.to(model.device)).float().cpu()  # (b, D)
        finite = torch.isfinite(z).all(-1)
        skipped += [(items[i].path, "non-finite embedding") for i, ok in zip(idx, finite) if not ok]
        order += [i for i, ok in zip(idx, finite) if ok]
        parts.append(z[finite].numpy())


@torch.no_grad()
def embed_items(model: Any, modality: str, items: Sequence[Item], batch_size: int = 64, num_workers: int = 2,
                show_progress: bool = True) -> EmbedReport:
    """Embed ``items`` of ``modality``: workers read and preprocess, the main process embeds.

    Returns:
        The embedded items with their (N, D) float32 unit vectors, and the skipped ones with reasons.
    """
    modality = modality_name(modality)
    loader = DataLoader(_Preprocessed(list(items), model.item_preprocessor(modality)), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate,
                        worker_init_fn=_worker_init if num_workers else None)
    was_training = model.training
    model.eval()
    order: List[int] = []
    parts: List[np.ndarray] = []
    skipped: List[Tuple[str, str]] = []
    try:
        _embed_batches(model, modality, loader, show_progress, items, order, parts, skipped)
    finally:
        model.train(was_training)
    vectors = np.concatenate(parts) if parts else np.zeros((0, model.anchor.embed_dim), dtype=np.float32)
    for path, reason in skipped:
        log.info("skipped %s: %s", path, reason)
    if skipped:
        log.warning("%d of %d %s item(s) could not be read and were skipped (listed in the report)", len(skipped),
                    len(items), modality)
    return EmbedReport([items[i] for i in order], vectors, skipped)
