"""The embedded backend of :class:`binder.Index`: FAISS vectors + SQLite metadata in a folder.

A folder holds ``index.json`` (what the index is, which model made it, the files of the current
*generation* with their sizes and SHA-256 digests) and that generation's ``vectors-<g>.faiss``
and ``items-<g>.sqlite``. A write (add, delete) produces generation ``g + 1`` beside ``g`` and
then replaces ``index.json`` with one rename: a reader, or a writer killed at any moment, sees
either the old index or the new one, never a mix. Files of other generations are leftovers of an
interrupted write and are removed by the next one. Writers take turns through the index's lock
(:func:`binder.files.exclusive`), and each re-reads ``index.json`` once it holds it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from binder.errors import BinderInputError
from binder.index.engine import FaissEngine, resolve_kind
from binder.files import FileRecord
from binder.index.store import MetadataStore, Where
from binder.files import file_digest

log = logging.getLogger(__name__)

def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    """FAISS + SQLite files of one generation in ``folder``."""

    name = "faiss"

    def __init__(self, folder: Path, engine: FaissEngine, store: MetadataStore, generation: int) -> None:
        self.folder, self.engine, self.store, self.generation = folder, engine, store, generation

    # ----- opening ----------------------------------------------------------------------------

    @staticmethod
    def file_names(generation: int) -> Tuple[str, str]:
        return f"vectors-{generation}.faiss", f"items-{generation}.sqlite"

    @classmethod
    def create(cls, folder: Path, dim: int, kind: str) -> "LocalBackend":
        """An empty generation 0 in ``folder`` (a new, private folder: see :func:`atomic_folder`)."""
        store = MetadataStore(folder / cls.file_names(0)[1], readonly=False)
        return cls(folder, FaissEngine(dim, kind), store, 0)

    @classmethod
    def open(cls, folder: Path, manifest: Mapping[str, Any], verify: bool) -> "LocalBackend":
        """The generation ``index.json`` names, its files checked against the recorded sizes (and
        digests, with ``verify``)."""
        generation = int(manifest.get("generation", 0))
        names = cls.file_names(generation)
        check_files(folder, manifest.get("files", {}), names, verify)
        engine = FaissEngine.load(folder / names[0], manifest["kind"], int(manifest["dim"]),
                                  manifest.get("search_breadth"))
        store = MetadataStore(folder / names[1], readonly=True)
        backend = cls(folder, engine, store, generation)
        backend.engine.tombstones = np.setdiff1d(engine.ids(), store.all_ids()) if engine.kind == "hnsw" else \
            np.zeros(0, dtype=np.int64)
        return backend

    # ----- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        return len(self.engine)  # the live vectors, one per row of the store

    def columns(self) -> List[str]:
        return list(self.store.columns)

    def rows(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        return self.store.rows(ids)

    def hit_rows(self, ids: Sequence[int]) -> Dict[int, Tuple[str, Mapping[str, Any]]]:
        return self.store.hit_rows(ids)

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Any]:
        return self.store.hits(scores, ids)

    def missing(self, ids: Sequence[int]) -> List[int]:
        return self.store.missing(ids)

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> Tuple[np.ndarray, np.ndarray]:
        allowed = None if where is None else self.store.ids_where(where)
        return self.engine.search(queries, k, allowed)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self.engine.vectors(np.asarray(ids, dtype=np.int64))

    # ----- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator["LocalBackend"]:
        """A writable copy of the current generation as generation ``g + 1`` (in memory + a copied
        SQLite file); the caller then :meth:`finish` es it and publishes ``index.json``."""
        nxt = self.generation + 1
        vec_name, meta_name = self.file_names(nxt)
        for stale in (vec_name, meta_name):
            (self.folder / stale).unlink(missing_ok=True)
        shutil.copyfile(self.store.path, self.folder / meta_name)
        writer = LocalBackend(self.folder, self.engine, MetadataStore(self.folder / meta_name, readonly=False), nxt)
        try:
            yield writer
        except BaseException:
            writer.store.close()
            for name in (vec_name, meta_name):
                (self.folder / name).unlink(missing_ok=True)
            raise

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]],
            files: Optional[Sequence[Optional[FileRecord]]] = None) -> None:
        self.store.insert(ids, rows, files)
        self.engine.add(ids, vectors)

    def file_record(self, item_id: int) -> Optional[FileRecord]:
        return self.store.file_record(item_id)

    def delete(self, ids: Sequence[int]) -> None:
        self.store.delete(ids)
        self.engine.remove(np.asarray(ids, dtype=np.int64))

    def finish(self, requested_kind: str) -> Dict[str, Any]:
        """Write this generation's files (rebuilding the engine when tombstones pile up, an IVF index
        outgrows its lists or the size crosses the ANN threshold; tuning a new one's search breadth)
        -> the ``index.json`` fields that describe them."""
        kind = resolve_kind(requested_kind, len(self.engine)) if requested_kind == "auto" else self.engine.kind
        if kind != self.engine.kind or self.engine.needs_rebuild():
            log.info("rebuilding the %s index as %s (%d vectors)", self.engine.kind, kind, len(self.engine))
            self.engine = self.engine.rebuilt(kind)
        tuned = self.engine.tune() if self.engine.breadth is None else {}  # a new or rebuilt engine
        self.store.commit()
        self.store.close()
        vec_name, meta_name = self.file_names(self.generation)
        tmp = self.folder / (vec_name + ".tmp")
        self.engine.save(tmp)
        _fsync(tmp)
        os.replace(tmp, self.folder / vec_name)
        _fsync(self.folder / meta_name)
        self.store = MetadataStore(self.folder / meta_name, readonly=True)
        files = {n: {"size": (self.folder / n).stat().st_size, "sha256": file_digest(self.folder / n)}
                 for n in (vec_name, meta_name)}
        return {"engine": self.name, "kind": self.engine.kind, "generation": self.generation, "files": files, **tuned}

    def drop_other_generations(self) -> None:
        """Remove files of generations other than this one (after ``index.json`` points here)."""
        keep = set(self.file_names(self.generation)) | {"index.json"}
        for p in self.folder.iterdir():
            if p.is_file() and p.name not in keep and (p.name.startswith(("vectors-", "items-")) or
                                                      p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)

    def close(self) -> None:
        self.store.close()


def check_files(folder: Path, files: Mapping[str, Any], names: Sequence[str], verify: bool) -> None:
    """Every file of the generation is there with its recorded size (and digest, with ``verify``).

    Raises:
        BinderInputError: a missing, truncated or altered file, naming it.
    """
    for name in names:
        record, path = files.get(name), folder / name
        if not isinstance(record, dict):
            raise BinderInputError(f"index {str(folder)!r} is damaged: index.json does not list {name}")
        if not path.is_file():
            raise BinderInputError(f"index {str(folder)!r} is damaged or half-written: {name} is missing")
        if path.stat().st_size != record.get("size"):
            raise BinderInputError(f"index {str(folder)!r} is damaged or half-written: {name} has "
                                   f"{path.stat().st_size} bytes, index.json says {record.get('size')}")
        if verify and file_digest(path) != record.get("sha256"):
            raise BinderInputError(f"index {str(folder)!r} is damaged: {name} does not match its recorded SHA-256")
