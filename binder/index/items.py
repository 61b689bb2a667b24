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
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class FileRecord:
    """What a file was when it was indexed: its real path (symbolic links resolved), size and
    modification time. A file that no longer matches is not served as the indexed item."""

    real: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: "str | os.PathLike") -> "FileRecord":
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, int(st.st_size), int(st.st_mtime_ns))

    def matches(self, path: "str | os.PathLike") -> bool:
        """Whether ``path`` still resolves to this file, unchanged."""
        try:
            os.close(self.open(path))
        except (OSError, BinderInputError):
            return False
        return True

    def open(self, path: "str | os.PathLike") -> int:
        """A read-only descriptor of this very file, reached through ``path``: ``path`` must still
        resolve to the recorded real path, and the file opened there (never through a symbolic
        link swapped in since) must have the recorded size and time.

        Raises:
            BinderInputError: the file changed, moved or is gone.
        """
        changed = BinderInputError(f"file {str(path)!r} changed since it was indexed (its size, time or where it "
                                   "resolves differ)")
        if os.path.realpath(path) != self.real:
            raise changed
        try:
            fd = os.open(self.real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise changed from None
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            os.close(fd)
            raise changed
        return fd


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
        if modality == TEXT and path.suffix.lower() not in MANIFEST_SUFFIXES:
            items += _texts(source, path)
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

    def __init__(self, items: Sequence[Item], preprocess: Callable[[Any], torch.Tensor], files: bool) -> None:
        self.items, self.preprocess, self.files = items, preprocess, files

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tuple[int, Any, Optional[FileRecord]]:
        item = self.items[i]
        try:
            record = _record(item.path) if self.files else None  # taken before reading the file
            x = self.preprocess(item.path)
        except BinderError as err:
            return i, str(err), None
        except Exception as err:  # a decoder's own error: report it, keep going
            return i, f"{type(err).__name__}: {err}", None
        if not torch.isfinite(x).all():
            return i, "preprocessing gave NaN or infinite values", None
        return i, x, record


def _record(path: str) -> Optional[FileRecord]:
    try:
        return FileRecord.of(path)
    except OSError:  # the preprocessor names the problem
        return None


Batch = Tuple[List[int], Optional[torch.Tensor], List[Tuple[int, str]], List[Optional[FileRecord]]]


def _collate(batch: List[Tuple[int, Any, Optional[FileRecord]]]) -> Batch:
    good = [(i, x, f) for i, x, f in batch if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x, _ in batch if not isinstance(x, torch.Tensor)]
    shapes = {tuple(x.shape) for _, x, _ in good}
    if len(shapes) > 1:  # a preprocessor with variable output: keep the most common shape, report the rest
        common = max(shapes, key=lambda s: sum(tuple(x.shape) == s for _, x, _ in good))
        bad += [(i, f"preprocessed to shape {tuple(x.shape)}, the batch has {common}") for i, x, _ in good
                if tuple(x.shape) != common]
        good = [g for g in good if tuple(g[1].shape) == common]
    stacked = torch.stack([x for _, x, _ in good]) if good else None
    return [i for i, _, _ in good], stacked, bad, [f for _, _, f in good]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the main process for cores


def _embed_batches(model: Any, modality: str, loader: DataLoader, show_progress: bool, items: Sequence[Item],
                   kept: List[Item], parts: List[np.ndarray], skipped: List[Tuple[str, str]]) -> None:
    """Embed the loader's batches, appending kept items (with their file records), (b, D) vectors
    and skips in place."""
    for idx, x, bad, files in progress(loader, f"embed {modality}", enabled=show_progress, unit="batch"):
        skipped += [(items[i].path, reason) for i, reason in bad]
        if x is None:
            continue
        z = model.encode(modality, x.to(model.device)).float().cpu()  # (b, D)
        finite = torch.isfinite(z).all(-1)
        skipped += [(items[i].path, "non-finite embedding") for i, ok in zip(idx, finite) if not ok]
        kept += [replace(items[i], file=f) for i, f, ok in zip(idx, files, finite.tolist()) if ok]
        parts.append(z[finite].numpy())


@torch.no_grad()
def embed_items(model: Any, modality: str, items: Sequence[Item], batch_size: int = 64, num_workers: int = 2,
                show_progress: bool = True) -> EmbedReport:
    """Embed ``items`` of ``modality``: workers read and preprocess, the main process embeds.

    Returns:
        The embedded items with their (N, D) float32 unit vectors, and the skipped ones with reasons.
    """
    modality = modality_name(modality)
    check_bulk_options(batch_size, num_workers)
    dataset = _Preprocessed(list(items), model.item_preprocessor(modality), files=modality != TEXT)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                        worker_init_fn=_worker_init if num_workers else None)
    was_training = model.training
    model.eval()
    kept: List[Item] = []
    parts: List[np.ndarray] = []
    skipped: List[Tuple[str, str]] = []
    try:
        _embed_batches(model, modality, loader, show_progress, items, kept, parts, skipped)
    finally:
        model.train(was_training)
    vectors = np.concatenate(parts) if parts else np.zeros((0, model.anchor.embed_dim), dtype=np.float32)
    for path, reason in skipped:
        log.info("skipped %s: %s", path, reason)
    if skipped:
        log.warning("%d of %d %s item(s) could not be read and were skipped (listed in the report)", len(skipped),
                    len(items), modality)
    return EmbedReport(kept, vectors, skipped)


MAX_BATCH, MAX_WORKERS = 65_536, 256


def check_bulk_options(batch_size: Any, num_workers: Any) -> None:
    """Bulk embedding settings: a batch size of at least 1 and a worker count of at least 0."""
    for name, value, low, high in (("batch_size", batch_size, 1, MAX_BATCH), ("num_workers", num_workers, 0,
                                                                               MAX_WORKERS)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
            raise BinderInputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
