"""The vectors of a ``faiss`` index: FAISS (Johnson et al., "Billion-scale similarity search
with GPUs", 2017), chosen by measurement (``benchmarks/index_engines.py``).

Small collections use exact inner-product search (``IndexFlatIP``). From ``ANN_FROM`` vectors an
inverted file (``IndexIVFFlat``: about 2 sqrt(N) k-means lists, a query scans the ``nprobe``
nearest) answers many times faster; an HNSW graph (Malkov & Yashunin, 2018; ``IndexHNSWFlat``,
M = 32) is the other choice (``kind="hnsw"``). Either way the search breadth (``nprobe`` or
``efSearch``) is *tuned when the index is built*: the smallest breadth whose recall@10 against
exact search reaches ``RECALL_TARGET`` on probe queries that are midpoints of two indexed vectors
(what a composed image + sound query looks like, and the hard case for a graph walk, which tends
to stay near one of the two), recorded in ``index.json``. Flat and HNSW indexes sit in an
``IndexIDMap2`` so vectors carry binder's ids; the inverted file stores them itself. The flat and
IVF indexes remove vectors at once; HNSW cannot, so deleted ids become tombstones skipped at
search time until the graph is rebuilt (on the next write once they are over a tenth of it). An
IVF index is retrained on a write that finds it grown or shrunk fourfold since its lists were
made. A filter that keeps few vectors is answered exactly over those vectors.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from binder.errors import BinderIndexError, BinderInputError

log = logging.getLogger(__name__)

ANN_FROM = 100_000  # kind="auto": exact below this many vectors, IVF from here on
HNSW_M, EF_CONSTRUCTION = 32, 80
BREADTHS = {"ivf": (1, 2, 4, 8, 16, 32, 64, 128, 256), "hnsw": (16, 32, 64, 128, 256, 512, 1024)}
RECALL_TARGET = 0.95  # tuned breadth: the smallest whose probe recall@10 reaches this
RECALL_QUERIES = 200  # probe queries for tuning
IVF_TRAIN_PER_LIST = 50  # k-means training vectors per list (FAISS wants at least 39)
EXACT_SUBSET = 20_000  # a filter keeping at most this many vectors is searched exactly over them
REBUILD_AT = 0.1  # rebuild the HNSW graph once tombstones pass this share of it
KINDS = ("auto", "flat", "ivf", "hnsw", "ivf_sq8")


def _faiss():
    import faiss

    return faiss


def resolve_kind(kind: str, count: int) -> str:
    """``auto`` -> ``flat`` below :data:`ANN_FROM` vectors, else ``ivf_sq8`` (8-bit codes in
    memory, exact re-ranking: :mod:`binder.index.engines.quantized`)."""
    if kind not in KINDS:
        raise BinderInputError(f"index kind must be one of {list(KINDS)}, got {kind!r}")
    return kind if kind != "auto" else ("ivf_sq8" if count >= ANN_FROM else "flat")


def ivf_lists(count: int) -> int:
    """Inverted lists for ``count`` vectors: the power of two nearest 2 sqrt(count) (1024 for 200k)."""
    return int(2 ** round(math.log2(max(16.0, 2 * math.sqrt(max(count, 1))))))


def list_count(count: int, sample: int) -> int:
    """The lists an IVF index of ``count`` vectors gets from a training sample of ``sample``."""
    return max(1, min(ivf_lists(count), sample // IVF_TRAIN_PER_LIST))


class VectorIndex:
    """Unit vectors with int64 ids; inner-product (cosine) search.

    Args:
        dim: Vector size.
        kind: ``flat`` (exact), ``ivf`` or ``hnsw``.
        breadth: ``nprobe`` (ivf) or ``efSearch`` (hnsw); None until tuned (see :meth:`tune`).
        index: A loaded FAISS index (else an empty one; an IVF index is made at the first add).
    """

    def __init__(self, dim: int, kind: str = "flat", breadth: Optional[int] = None, index: object = None) -> None:
        faiss = _faiss()
        self.dim, self.kind, self.breadth = int(dim), kind, breadth
        if index is None and kind == "hnsw":
            base = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = EF_CONSTRUCTION
            index = faiss.IndexIDMap2(base)
        elif index is None and kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self.index = index  # ivf: None until trained
        self.tombstones = np.zeros(0, dtype=np.int64)

    # ----- contents ---------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        """Every id the engine holds, tombstones included."""
        faiss = _faiss()
        if self.index is None:
            return np.zeros(0, dtype=np.int64)
        if self.kind != "ivf":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        lists = self.index.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(self.index.nlist)
                 if lists.list_size(i)]
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return (int(self.index.ntotal) if self.index is not None else 0) - len(self.tombstones)

    def train(self, sample: np.ndarray, count: int) -> None:
        """Make the IVF lists for a collection of ``count`` vectors from ``sample`` (N, D)."""
        faiss = _faiss()
        nlist = list_count(count, len(sample))
        rng = np.random.default_rng(0)
        take = rng.choice(len(sample), min(len(sample), IVF_TRAIN_PER_LIST * nlist), replace=False)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(sample[np.sort(take)], dtype=np.float32))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
        self.index = index
        log.info("IVF index: %d lists trained on %d vectors", nlist, len(take))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise BinderInputError(f"vectors must be (N, {self.dim}), got {vectors.shape}")
        if self.index is None:  # an IVF index's first vectors train its lists
            self.train(vectors, len(vectors))
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        """Remove ids: from flat and IVF indexes at once, from HNSW as tombstones."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "hnsw":
            self.tombstones = np.union1d(self.tombstones, ids)
        elif self.index is not None:  # an IVF id hashtable removes from an array selector only
            ids = np.ascontiguousarray(ids)
            self.index.remove_ids(_faiss().IDSelectorArray(len(ids), _faiss().swig_ptr(ids)))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (N, D)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(ids)

    def needs_rebuild(self) -> bool:
        """HNSW: tombstones over a tenth; IVF: grown or shrunk fourfold since training."""
        if self.kind == "hnsw":
            return len(self.tombstones) > REBUILD_AT * max(1, self.index.ntotal)
        if self.kind == "ivf" and self.index is not None:
            want = list_count(len(self), len(self))
            return want >= 2 * self.index.nlist or 2 * want <= self.index.nlist  # ~ sqrt: a fourfold size change
        return False

    # ----- tuning -----------------------------------------------------------------------------

    def tune(self, k: int = 10, target: float = RECALL_TARGET, seed: int = 0) -> Dict[str, Any]:
        """Set the smallest search breadth whose recall@k against exact search reaches ``target``
        on midpoints of two random indexed vectors -> the fields ``index.json`` records."""
        live = np.setdiff1d(self.ids(), self.tombstones)
        if self.kind == "flat" or len(live) < 2 * k:
            self.breadth = None
            return {"search_breadth": None, "ann_recall_at_10": None}
        rng = np.random.default_rng(seed)
        a, b = rng.choice(live, size=(2, RECALL_QUERIES))
        q = self.vectors(a) + self.vectors(b)  # (Q, D)
        q /= np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
        exact = exact_topk(self, q, live, k)
        for breadth in BREADTHS[self.kind]:
            self.breadth = breadth
            found = self.search(q, k)[1]
            recall = float(np.mean([len(set(e) & set(f)) / k for e, f in zip(exact.tolist(), found.tolist())]))
            if recall >= target:
                break
        log.info("%s search breadth %d: recall@%d %.4f against exact search (%d midpoint probes, target %.2f)",
                 self.kind, self.breadth, k, recall, RECALL_QUERIES, target)
        return {"search_breadth": self.breadth, "ann_recall_at_10": recall}

    # ----- search -----------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int,
               allowed: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product -> (scores (N, k), ids (N, k)); missing hits are id -1.

        Args:
            queries: (N, D) float32 unit vectors.
            k: Hits per query.
            allowed: Only these ids (a ``where`` filter), or None for all.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None:
            allowed = np.setdiff1d(allowed, self.tombstones) if len(self.tombstones) else allowed
            if self.kind == "flat" or len(allowed) <= EXACT_SUBSET:
                return exact_subset(self, queries, k, allowed)
        if self.index is None:  # an IVF index with nothing added yet
            return exact_subset(self, queries, k, np.zeros(0, dtype=np.int64))
        if self.kind == "flat" or not self.index.ntotal:
            return self.index.search(queries, k)
        return self.index.search(queries, k, params=self.search_params(k, allowed))

    def search_params(self, k: int, allowed: Optional[np.ndarray] = None) -> Any:
        """FAISS search parameters (None for a flat index) of an IVF or HNSW index: the tuned breadth (doubled under a
        filter, which leaves fewer candidates per list or node), the filter or the tombstones."""
        faiss = _faiss()
        if self.kind == "flat":
            return None
        breadth = self.breadth or BREADTHS[self.kind][len(BREADTHS[self.kind]) // 2]
        breadth = 2 * breadth if allowed is not None else breadth
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=min(self.index.nlist, breadth))
        else:
            params = faiss.SearchParametersHNSW(efSearch=max(breadth, k))
        if allowed is not None:
            params.sel = faiss.IDSelectorBatch(allowed)
        elif len(self.tombstones):
            params.sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.tombstones))
        return params

    # ----- files ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, kind: str, dim: int, breadth: Optional[int] = None) -> "VectorIndex":
        return cls(dim, kind, breadth, index=read_index(path, dim))  # the concrete class (and owns it)


def read_index(path: Path, dim: int) -> Any:
    """A FAISS index file of ``dim``-dimensional vectors; an unreadable file or another size is a
    :class:`BinderIndexError` naming it."""
    try:
        index = _faiss().read_index(str(path))
    except RuntimeError as err:
        raise BinderIndexError(f"index vectors {str(path)!r} are not a readable FAISS index "
                               f"({str(err).strip().splitlines()[-1][:160]})") from None
    if index.d != dim:
        raise BinderIndexError(f"index vectors {str(path)!r} have {index.d} dimensions, index.json says {dim}")
    return index


def exact_topk(store: Any, queries: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids (Q, k) over ``ids``, reading ``store.vectors`` in chunks."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(ids), 50_000):
        part = ids[start : start + 50_000]
        sims = np.concatenate([best_s, queries @ store.vectors(part).T], axis=1)  # (Q, kept + chunk)
        cand = np.concatenate([best_i, np.broadcast_to(part, (len(queries), len(part)))], axis=1)
        top = np.argpartition(-sims, min(k, sims.shape[1]) - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(sims, top, 1), np.take_along_axis(cand, top, 1)
    return best_i


def exact_subset(store: Any, queries: np.ndarray, k: int, allowed: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` among the ids ``allowed`` -> (scores (N, k), ids (N, k)); -1 past them."""
    n = len(queries)
    scores, ids = np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
    if not len(allowed):
        return scores, ids
    sims = queries @ store.vectors(allowed).T  # (N, A)
    top = min(k, len(allowed))
    idx = np.argpartition(-sims, top - 1, axis=1)[:, :top]  # (N, top), unordered
    order = np.argsort(-np.take_along_axis(sims, idx, 1), axis=1)
    idx = np.take_along_axis(idx, order, 1)
    scores[:, :top], ids[:, :top] = np.take_along_axis(sims, idx, 1), allowed[idx]
    return scores, ids
