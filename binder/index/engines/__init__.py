"""Index engines: where an index's vectors and metadata live, behind one :class:`Engine` protocol.

An engine is one module of this package (or of a third-party package, through the
``binder.index_engines`` entry-point group) that registers its class in :data:`ENGINES`; the
protocol is checked then, naming what is missing. Every engine is built, opened and written the
same way by :class:`binder.Index`:

- build: ``cls.create(folder, target, dim, kind, options)`` (an empty index in the new folder
  that becomes ``target``), then a write;
- open: ``cls.open(folder, manifest, verify=, wait=)``;
- write: ``with engine.writing() as writer:`` add and delete, ``writer.finish(kind)`` -> the
  ``index.json`` fields; once ``index.json`` is published, ``writer.published(manifest)`` is the
  engine to read from. A write becomes visible to readers in one step, when ``index.json`` is
  replaced (each engine says how it keeps that promise).

Built in: ``faiss`` (FAISS + SQLite files in the index folder, :mod:`.faiss`) and ``qdrant`` (a
Qdrant collection, local or a cluster, :mod:`.qdrant`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ContextManager, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from binder.errors import BinderInputError
from binder.extension import Registry, protocol_check
from binder.files import FileRecord

Where = Union[None, str, Mapping[str, Any]]
"""A metadata filter: None, an SQL expression, or ``{column: value or [values]}``."""


class Writer(Protocol):
    """The changes of one write, applied where readers cannot see them until published."""

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]],
            files: Optional[Sequence[Optional[FileRecord]]] = None) -> None: ...

    def delete(self, ids: Sequence[int]) -> None: ...

    def missing(self, ids: Sequence[int]) -> List[int]: ...

    def finish(self, requested_kind: str) -> Dict[str, Any]: ...

    def published(self, manifest: Mapping[str, Any]) -> "Engine": ...


class Engine(Protocol):
    """Vectors with integer ids, their metadata rows and file records; cosine search."""

    name: str

    @classmethod
    def create(cls, folder: Path, target: Path, dim: int, kind: str, options: Mapping[str, Any]) -> "Engine": ...

    @classmethod
    def open(cls, folder: Path, manifest: Mapping[str, Any], verify: bool, wait: float) -> "Engine": ...

    def count(self) -> int: ...

    def columns(self) -> List[str]: ...

    def rows(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]: ...

    def file_record(self, item_id: int) -> Optional[FileRecord]: ...

    def missing(self, ids: Sequence[int]) -> List[int]: ...

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> Tuple[np.ndarray, np.ndarray]: ...

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Any]: ...

    def writing(self) -> ContextManager[Writer]: ...

    def follow(self, manifest: Mapping[str, Any]) -> "Engine": ...

    def close(self) -> None: ...


ENGINES: Registry = Registry("index engine", group="binder.index_engines", builtin=("binder.index.engines",),
                             check=protocol_check(Engine), error=BinderInputError)


def engine_class(name: str) -> Any:
    """The engine registered as ``name`` (an error listing the registered ones otherwise)."""
    return ENGINES.get(name)
