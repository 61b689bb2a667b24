"""What gets indexed: files, folders or a manifest, read and embedded in bulk.

Items are files (each with its metadata), gathered from paths of files, folders (searched
recursively for the modality's file types) or a manifest (CSV or JSON Lines with a ``path``
column, relative paths resolved against the manifest's folder, every other column kept as
metadata; for ``text``, a ``text`` column). Bulk embedding reads and preprocesses the files in
DataLoader worker processes, embeds batches in the main one, and skips files that cannot be read,
keeping each with its reason: nothing is lost silently and the rest is still embedded.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from binder.embedding import embed_inputs
from binder.errors import BinderInputError
from binder.files import FileRecord
from binder.manifests import is_manifest, read_rows, resolve
from binder.registry import get_modality
from binder.types import IMAGE, TEXT, modality_name

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Item:
    """One thing to index: its ``path`` (for text: the text), metadata columns and, once read,
    the :class:`FileRecord` of its file (None for text)."""

    path: str
    meta: Dict[str, Any] = field(default_factory=dict)
    file: Optional[FileRecord] = None

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
        if modality == TEXT and not is_manifest(path):
            items += _texts(source, path)
        elif path.is_dir():
            items += _folder(path, modality)
        elif is_manifest(path) and path.is_file():
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


def _texts(source: Any, path: Path) -> List[Item]:
    """Text items: a folder's ``.txt`` files, one ``.txt`` file, or the text itself as given."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise BinderInputError(f"text folder {str(path)!r} holds no .txt files: give .txt files, a folder of "
                                   "them, a manifest (.csv / .jsonl with a text column) or the texts themselves")
        return [_text_file(p, {"file": str(p.absolute()), "folder": str(p.parent.relative_to(path))}) for p in files]
    if path.suffix.lower() == ".txt" and path.is_file():
        return [_text_file(path, {"file": str(path.absolute())})]
    return [Item(str(source))]  # text is indexed as given


def _text_file(path: Path, meta: Dict[str, Any]) -> Item:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise BinderInputError(f"text file {str(path)!r} is not readable UTF-8 text: {err}") from None
    if not text:
        raise BinderInputError(f"text file {str(path)!r} is empty: expected the text to index")
    return Item(text, meta)


def read_manifest(path: Path, modality: str) -> List[Item]:
    """Rows of a CSV (header) or JSON Lines manifest -> items (:mod:`binder.manifests`); numbers in
    CSV cells become numbers; a ``path`` column (for text, a ``text`` column) is required."""
    key = "text" if modality == TEXT else "path"
    items = []
    for line, row in read_rows(path, typed=True):
        value = row.pop(key, None)
        if value in (None, ""):
            raise BinderInputError(f"manifest {str(path)!r} line {line}: no {key!r} value (columns: {sorted(row)})")
        value = resolve(value, path) if key == "path" else str(value)
        items.append(Item(value, {k: v for k, v in row.items() if k not in ("id", "path")}))
    return items


# ----------------------------------------------------------------------------------------------
# Bulk embedding
# ----------------------------------------------------------------------------------------------

def embed_items(model: Any, modality: str, items: Sequence[Item], batch_size: int = 64, num_workers: int = 2,
                show_progress: bool = True, autocast: Any = None) -> EmbedReport:
    """Embed ``items`` of ``modality`` with binder's one embedding loop
    (:func:`binder.embedding.embed_inputs`): workers read and preprocess, the main process embeds;
    a file that cannot be read is skipped and reported, and each file's record is taken before
    it is read (what the search page checks before serving it).

    Returns:
        The embedded items with their (N, D) float32 unit vectors, and the skipped ones with reasons.
    """
    modality = modality_name(modality)
    check_bulk_options(batch_size, num_workers)
    items = list(items)
    done = embed_inputs(model, modality, [it.path for it in items], batch_size=batch_size, num_workers=num_workers,
                        on_error="skip", record_files=modality != TEXT, progress=show_progress, autocast=autocast)
    skipped = [(items[i].path, reason) for i, reason in done.skipped]
    for path, reason in skipped:
        log.info("skipped %s: %s", path, reason)
    if skipped:
        log.warning("%d of %d %s item(s) could not be read and were skipped (listed in the report)", len(skipped),
                    len(items), modality)
    kept = [replace(items[i], file=f) for i, f in zip(done.kept, done.files)]
    return EmbedReport(kept, done.vectors, skipped)


MAX_BATCH, MAX_WORKERS = 65_536, 256


def check_bulk_options(batch_size: Any, num_workers: Any) -> None:
    """Bulk embedding settings: a batch size of at least 1 and a worker count of at least 0."""
    for name, value, low, high in (("batch_size", batch_size, 1, MAX_BATCH), ("num_workers", num_workers, 0,
                                                                               MAX_WORKERS)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise BinderInputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
