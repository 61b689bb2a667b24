"""The vector engine of a local index: FAISS (Johnson et al., "Billion-scale similarity search
with GPUs", 2017), chosen by measurement (``benchmarks/index_engines``).

Small collections use exact inner-product search (``IndexFlatIP``); above ``ANN_FROM`` vectors
an HNSW graph (Malkov & Yashunin, 2018; ``IndexHNSWFlat``, M = 32) answers at about ten times
the speed with recall@10 near 0.99 (measured and recorded at build time). Both sit in an
``IndexIDMap2`` so vectors carry binder's ids. HNSW cannot remove vectors: deleted ids become
tombstones skipped at search time (an ``IDSelector``) until the graph is rebuilt, which happens
on the next write once they are over a tenth of it. A filter that keeps few vectors is answered
exactly over those vectors, since a filtered graph walk can miss some of them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from binder.errors import BinderInputError

log = logging.getLogger(__name__)

ANN_FROM = 100_000  # kind="auto": exact below this many vectors, HNSW from here on
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 80, 64
EXACT_SUBSET = 20_000  # a filter keeping at most this many vectors is searched exactly over them
REBUILD_AT = 0.1  # rebuild the HNSW graph once tombstones pass this share of it
KINDS = ("auto", "flat", "hnsw")


def _faiss():
    import faiss

    return faiss


def resolve_kind(kind: str, count: int) -> str:
    """``auto`` -> ``flat`` below :data:`ANN_FROM` vectors, else ``hnsw``."""
    if kind not in KINDS:
        raise BinderInputError(f"index kind must be one of {list(KINDS)}, got {kind!r}")
    return kind if kind != "auto" else ("hnsw" if count >= ANN_FROM else "flat")


class FaissEngine:
    """Unit vectors with int64 ids; inner-product (cosine) search.

    Args:
        dim: Vector size.
        kind: ``flat`` (exact) or ``hnsw``.
        ef_search: HNSW search breadth (recall/speed trade-off).
    """

    def __init__(self, dim: int, kind: str = "flat", ef_search: int = EF_SEARCH, index: object = None) -> None:
        faiss = _faiss()
        self.dim, self.kind, self.ef_search = int(dim), kind, int(ef_search)
        if index is None:
            if kind == "hnsw":
                base = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
                base.hnsw.efConstruction = EF_CONSTRUCTION
            else:
                base = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIDMap2(base)
        self.index = index
        self.tombstones = np.zeros(0, dtype=np.int64)

    # ----- contents ---------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        """Every id the engine holds, tombstones included."""
        return _faiss().vector_to_array(self.index.id_map).astype(np.int64)

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.tombstones)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise BinderInputError(f"vectors must be (N, {self.dim}), got {vectors.shape}")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids: from a flat index at once, from HNSW as tombstones."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "flat":
            self.index.remove_ids(ids)
        else:
            self.tombstones = np.union1d(self.tombstones, ids)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (N, D)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(ids)

    def needs_rebuild(self) -> bool:
        return self.kind == "hnsw" and len(self.tombstones) > REBUILD_AT * max(1, self.index.ntotal)

    def rebuilt(self, kind: Optional[str] = None) -> "FaissEngine":
        """A fresh engine (of ``kind``, default this one's) holding the live vectors only."""
        live = np.setdiff1d(self.ids(), self.tombstones)
        fresh = FaissEngine(self.dim, kind or self.kind, self.ef_search)
        for start in range(0, len(live), 50_000):
            part = live[start : start + 50_000]
            fresh.add(part, self.vectors(part))
        return fresh

    # ----- search -----------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, allowed: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product -> (scores (N, k), ids (N, k)); missing hits are id -1.

        Args:
            queries: (N, D) float32 unit vectors.
            k: Hits per query.
            allowed: Only these ids (a ``where`` filter), or None for all.
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None:
            allowed = np.setdiff1d(allowed, self.tombstones) if len(self.tombstones) else allowed
            if self.kind == "flat" or len(allowed) <= EXACT_SUBSET:
                return self._exact_subset(queries, k, allowed)
            params = faiss.SearchParametersHNSW(sel=faiss.IDSelectorBatch(allowed), efSearch=max(self.ef_search, 2 * k))
            return self.index.search(queries, k, params=params)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            if len(self.tombstones):
                params.sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.tombstones))
            return self.index.search(queries, k, params=params)
        return self.index.search(queries, k)

    def _exact_subset(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        n = len(queries)
        scores, ids = np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
        if not len(allowed):
            return scores, ids
        sims = queries @ self.vectors(allowed).T  # (N, A)
        top = min(k, len(allowed))
        idx = np.argpartition(-sims, top - 1, axis=1)[:, :top]  # (N, top), unordered
        order = np.argsort(-np.take_along_axis(sims, idx, 1), axis=1)
        idx = np.take_along_axis(idx, order, 1)
        scores[:, :top], ids[:, :top] = np.take_along_axis(sims, idx, 1), allowed[idx]
        return scores, ids

    # ----- files ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, kind: str, dim: int) -> "FaissEngine":
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise BinderInputError(f"index vectors {str(path)!r} are not a readable FAISS index "
                                   f"({str(err).strip().splitlines()[-1][:160]})") from None
        if index.d != dim:
            raise BinderInputError(f"index vectors {str(path)!r} have {index.d} dimensions, index.json says {dim}")
        return cls(dim, kind, index=faiss.downcast_index(index) if not isinstance(index, faiss.IndexIDMap2) else index)
