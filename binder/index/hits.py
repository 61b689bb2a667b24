"""Search results: :class:`Hit` (one result) and :class:`Hits` (one query's results, best first).

A search over a batch of queries makes one result per (query, rank), thousands per call, so a
hit is a tuple with named properties: the cheapest Python object to make in bulk (measured in
``benchmarks/index_engines.py``, where binder's whole search path is compared with the raw engine).
"""
from __future__ import annotations

from operator import itemgetter
from typing import Any, Dict, Iterator, List, Mapping, Tuple

import numpy as np


class Hit(tuple):
    """One search result: ``id``, ``score``, ``path``, ``metadata`` (it also unpacks as those four).
    ``metadata`` is a read-only mapping (compare it with a dict, or ``dict(hit.metadata)``),
    shared by every hit of the same item. Stored as ``(id, score, (path, metadata))``: a search
    makes thousands of hits, and this is the least a hit can hold."""

    __slots__ = ()
    _fields = ("id", "score", "path", "metadata")

    def __new__(cls, id: int, score: float, path: str, metadata: Mapping[str, Any]) -> "Hit":
        return tuple.__new__(cls, (id, score, (path, metadata)))

    id = property(itemgetter(0), doc="The item's id in the index.")
    score = property(itemgetter(1), doc="Cosine similarity to the query.")

    @property
    def path(self) -> str:
        """The item's path (or text)."""
        return self[2][0]

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The item's metadata columns, read-only (nulls left out)."""
        return self[2][1]

    def __iter__(self) -> Iterator[Any]:  # unpacking: id, score, path, metadata
        return iter((self[0], self[1], *self[2]))

    def __reduce__(self) -> tuple:  # pickling and copying: the metadata travels as a plain dict
        return Hit, (self[0], self[1], self[2][0], dict(self[2][1]))

    def __repr__(self) -> str:
        return f"Hit(id={self[0]}, score={self[1]:.4f}, path={self.path!r}, metadata={dict(self.metadata)!r})"


class Hits(List[Hit]):
    """The hits of one query, best first, with ``ids`` and ``scores`` as arrays."""

    @property
    def ids(self) -> np.ndarray:
        return np.array([h[0] for h in self], dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        return np.array([h[1] for h in self], dtype=np.float32)

    def to_records(self) -> List[Dict[str, Any]]:
        """JSON-able ``[{"rank", "id", "score", "path", "metadata"}]``."""
        return [{"rank": r, "id": h.id, "score": round(h.score, 6), "path": h.path, "metadata": dict(h.metadata)}
                for r, h in enumerate(self, 1)]


def hits_from_rows(scores: np.ndarray, ids: np.ndarray,
                   rows: Mapping[int, Tuple[str, Mapping[str, Any]]]) -> List[Hits]:
    """One :class:`Hits` per query from engine output (scores, ids: (N, k); id -1 = no hit) and
    ``{id: (path, metadata)}``; ids missing from ``rows`` are left out."""
    new = tuple.__new__  # Hit's constructor without a Python-level call per hit
    return [Hits([new(Hit, (i, s, rows[i])) for s, i in zip(s_row, i_row) if i in rows])
            for s_row, i_row in zip(scores.tolist(), ids.tolist())]
