"""The ``faiss`` index engine: FAISS vectors + SQLite metadata in the index folder.

A folder holds ``index.json`` (what the index is, which model made it, the files of the current
*generation* with their sizes and SHA-256 digests) and that generation's ``vectors-<g>.faiss``
(:class:`~binder.index.engines.vectors.VectorIndex`) and ``items-<g>.sqlite``
(:class:`~binder.index.engines.metadata.MetadataStore`). A write produces generation ``g + 1``
beside ``g`` and is published when :class:`binder.Index` replaces ``index.json`` with one rename:
a reader, or a writer killed at any moment, sees either the old index or the new one, never a
mix. Files of other generations are leftovers of an interrupted write and are removed by the next
one (writers take turns through the index's lock and re-read ``index.json`` under it).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from binder.errors import BinderIndexError, BinderInputError
from binder.files import FileRecord, file_digest
from binder.index.engines import ENGINES, Where
from binder.index.engines import quantized
from binder.index.engines.metadata import MetadataStore
from binder.index.engines.vectors import resolve_kind

log = logging.getLogger(__name__)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_names(generation: int, kind: Optional[str] = None) -> Tuple[str, ...]:
    """The files of a generation: vectors and items, and for ``ivf_sq8`` the float32 rows."""
    names: Tuple[str, ...] = (f"vectors-{generation}.faiss", f"items-{generation}.sqlite")
    return names + ((quantized.rows_name(names[0]),) if kind == quantized.KIND else ())


class FaissEngine:
    """The FAISS + SQLite files of one generation in ``folder`` (the engine, and the writer of the
    next generation).

    Args:
        folder: The index folder.
        vectors: The vector index (None until the first vectors of a new index arrive).
        store: The metadata table.
        generation: Which generation's files these are.
        kind: The requested kind (``auto``, ``flat``, ``ivf``, ``hnsw``), for a new index.
    """

    name = "faiss"

    def __init__(self, folder: Path, vectors: Optional[Any], store: MetadataStore, generation: int,
                 dim: int, kind: str = "auto") -> None:
        self.folder, self.vectors, self.store, self.generation = folder, vectors, store, generation
        self.dim, self.kind = dim, kind

    # ----- making and opening -----------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, target: Path, dim: int, kind: str, options: Mapping[str, Any]) -> "FaissEngine":
        """An empty generation 0 in ``folder`` (a new, private folder that becomes ``target``)."""
        if options:
            raise BinderInputError(f"the faiss engine takes no options, got {sorted(options)} (url= and "
                                   "collection= are qdrant's)")
        resolve_kind(kind, 0)  # a known kind, or one clear error
        return cls(folder, None, MetadataStore(folder / file_names(0)[1], readonly=False), 0, dim, kind)

    @classmethod
    def open(cls, folder: Path, manifest: Mapping[str, Any], verify: bool = True, wait: float = 0.0) -> "FaissEngine":
        """The generation ``index.json`` names, its files checked against the recorded sizes (and
        digests, with ``verify``)."""
        generation = int(manifest.get("generation", 0))
        names = file_names(generation, manifest["kind"])
        check_files(folder, manifest.get("files", {}), names, verify)
        dim = int(manifest["dim"])
        vectors = quantized.load(folder / names[0], manifest["kind"], dim, manifest)
        store = MetadataStore(folder / names[1], readonly=True)
        if vectors.kind == "hnsw":  # deleted ids stay in an HNSW graph until it is rebuilt
            vectors.tombstones = np.setdiff1d(vectors.ids(), store.all_ids())
        return cls(folder, vectors, store, generation, dim, manifest["kind"])

    def follow(self, manifest: Mapping[str, Any]) -> "FaissEngine":
        """The generation another writer published (searches under way keep this one)."""
        return FaissEngine.open(self.folder, manifest, verify=False)

    # ----- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        return len(self.vectors) if self.vectors is not None else 0  # the live vectors, one per row

    def columns(self) -> List[str]:
        return list(self.store.columns)

    def rows(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        return self.store.rows(ids)

    def file_record(self, item_id: int) -> Optional[FileRecord]:
        return self.store.file_record(item_id)

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Any]:
        return self.store.hits(scores, ids)

    def missing(self, ids: Sequence[int]) -> List[int]:
        return self.store.missing(ids)

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> Tuple[np.ndarray, np.ndarray]:
        allowed = None if where is None else self.store.ids_where(where)
        return self.vectors.search(queries, k, allowed)

    # ----- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator["FaissEngine"]:
        """A writable copy of this generation as generation ``g + 1`` (vectors in memory, a copy
        of the SQLite file); an error removes its files. A new index writes generation 0 itself."""
        if self.vectors is None:  # a new index: its generation 0 is the one being written
            yield self
            return
        nxt = self.generation + 1
        names = file_names(nxt, quantized.KIND)  # every file the next generation may have
        for stale in names:
            (self.folder / stale).unlink(missing_ok=True)
        shutil.copyfile(self.store.path, self.folder / names[1])
        writer = FaissEngine(self.folder, self.vectors, MetadataStore(self.folder / names[1], readonly=False), nxt,
                             self.dim, self.kind)
        try:
            yield writer
        except BaseException:
            writer.store.close()
            for name in names:
                (self.folder / name).unlink(missing_ok=True)
            raise

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]],
            files: Optional[Sequence[Optional[FileRecord]]] = None) -> None:
        if self.vectors is None:
            self.vectors = quantized.make(self.dim, resolve_kind(self.kind, len(ids)))
        self.store.insert(ids, rows, files)
        self.vectors.add(ids, vectors)

    def delete(self, ids: Sequence[int]) -> None:
        self.store.delete(ids)
        self.vectors.remove(np.asarray(ids, dtype=np.int64))

    def finish(self, requested_kind: str) -> Dict[str, Any]:
        """Write this generation's files (rebuilding the vector index when tombstones pile up, an
        IVF index outgrows its lists or the size crosses the ANN threshold; tuning a new one's
        search breadth) -> the ``index.json`` fields that describe them."""
        vectors = self.vectors
        kind = resolve_kind(requested_kind, len(vectors)) if requested_kind == "auto" else vectors.kind
        if kind != vectors.kind or vectors.needs_rebuild():
            log.info("rebuilding the %s index as %s (%d vectors)", vectors.kind, kind, len(vectors))
            self.vectors = vectors = quantized.rebuild(vectors, kind)
        tuned = vectors.tune() if vectors.breadth is None else {}  # a new or rebuilt index
        self.store.commit()
        self.store.close()
        names = file_names(self.generation, vectors.kind)
        writers = [(names[0], vectors.save)] + ([(names[2], vectors.save_rows)] if len(names) > 2 else [])
        for name, write in writers:
            tmp = self.folder / (name + ".tmp")
            write(tmp)
            _fsync(tmp)
            os.replace(tmp, self.folder / name)
        _fsync(self.folder / names[1])
        self.store = MetadataStore(self.folder / names[1], readonly=True)
        files = {n: {"size": (self.folder / n).stat().st_size, "sha256": file_digest(self.folder / n)} for n in names}
        return {"engine": self.name, "kind": vectors.kind, "generation": self.generation, "files": files, **tuned}

    def published(self, manifest: Mapping[str, Any]) -> "FaissEngine":
        """``index.json`` names this generation now: remove the files of every other one."""
        keep = set(file_names(self.generation, self.vectors.kind)) | {"index.json"}
        for p in self.folder.iterdir():
            if p.is_file() and p.name not in keep and (p.name.startswith(("vectors-", "items-")) or
                                                      p.name.endswith(".tmp")):
                p.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        self.store.close()


def check_files(folder: Path, files: Mapping[str, Any], names: Sequence[str], verify: bool) -> None:
    """Every file of the generation is there with its recorded size (and digest, with ``verify``).

    Raises:
        BinderIndexError: a missing, truncated or altered file, naming it.
    """
    for name in names:
        record, path = files.get(name), folder / name
        if not isinstance(record, dict):
            raise BinderIndexError(f"index {str(folder)!r} is damaged: index.json does not list {name}")
        if not path.is_file():
            raise BinderIndexError(f"index {str(folder)!r} is damaged or half-written: {name} is missing")
        if path.stat().st_size != record.get("size"):
            raise BinderIndexError(f"index {str(folder)!r} is damaged or half-written: {name} has "
                                   f"{path.stat().st_size} bytes, index.json says {record.get('size')}")
        if verify and file_digest(path) != record.get("sha256"):
            raise BinderIndexError(f"index {str(folder)!r} is damaged: {name} does not match its recorded SHA-256")


ENGINES.register(FaissEngine.name, FaissEngine)
