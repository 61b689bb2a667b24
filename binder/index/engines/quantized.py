"""A compressed ``faiss`` index: 8-bit codes in memory, exact re-ranking from disk (``ivf_sq8``).

A float32 index holds 4 KB per 1024-d vector (800 MB for 200k, 40 GB for 10M). This kind keeps in
memory only an inverted file (FAISS ``IndexIVFScalarQuantizer``, Jégou et al., "Product
quantization for nearest neighbor search", TPAMI 2011, for the inverted-file search with
compressed codes and re-ranking) whose codes are one byte per dimension, optionally of a
projection of the vectors on their leading principal directions (embeddings have a low
intrinsic dimension: a few hundred directions carry almost all of their energy). A query scans
the ``nprobe`` nearest lists on the codes, keeps a *shortlist* of ``rerank`` candidates and
re-ranks it exactly with the float32 vectors, read from a file beside the index (memory-mapped,
so only the rows a query touches are read): the hits and their scores are exact inner products.

Everything is *tuned when the index is built*: the projection keeps the fewest leading
directions (a power of two) that hold ``ENERGY`` of the vectors' energy, and the search keeps
the cheapest (``nprobe``, ``rerank``) pair, by the work it does, whose recall@10 against exact
search reaches the target on two kinds of probe queries, indexed items and midpoints of two
items (a composed query, the hard case). In memory: about ``dims + 8`` bytes per vector (26%
of float32 without a projection, 7% with 256 of 1024 directions); on disk, the float32 rows too.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from binder.errors import BinderIndexError, BinderInputError
from binder.index.engines.vectors import (
    EXACT_SUBSET,
    IVF_TRAIN_PER_LIST,
    RECALL_QUERIES,
    RECALL_TARGET,
    VectorIndex,
    exact_subset,
    exact_topk,
    ivf_lists,
    list_count,
    read_index,
)

log = logging.getLogger(__name__)

KIND = "ivf_sq8"
ENERGY = 0.98  # the projection keeps the fewest directions (a power of two) holding this share of the energy
MIN_DIMS = 64  # never project below this many directions
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RERANKS = (20, 40, 80, 160, 320, 640)  # shortlist sizes (for k = 10; scaled for larger k)
RERANK_COST = 4.0  # a re-ranked row costs this many code bytes scanned (random reads of float32 rows)
ROWS_MAGIC = b"BINDROWS"
HEADER = 24  # magic + count + dim


def _faiss():
    import faiss

    return faiss


# ----------------------------------------------------------------------------------------------
# The float32 rows, for re-ranking (a file: ids sorted, then their vectors)
# ----------------------------------------------------------------------------------------------

class Rows:
    """Float32 vectors by id: ``ids`` sorted (int64) and ``data`` (N, D), in memory or memory-mapped."""

    def __init__(self, ids: np.ndarray, data: np.ndarray) -> None:
        self.ids, self.data = ids, data

    @classmethod
    def empty(cls, dim: int) -> "Rows":
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32))

    @classmethod
    def joined(cls, ids: List[np.ndarray], data: List[np.ndarray]) -> "Rows":
        """Rows from blocks of ids and vectors, sorted by id."""
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        return cls(all_ids[order], np.concatenate(data)[order])

    def find(self, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(positions, found): where each of ``ids`` sits here, and whether it is here at all."""
        pos = np.searchsorted(self.ids, ids).clip(0, max(len(self.ids) - 1, 0))
        found = self.ids[pos] == ids if len(self.ids) else np.zeros(len(ids), dtype=bool)
        return pos, found

    @classmethod
    def load(cls, path: Path, dim: int) -> "Rows":
        where = repr(str(path))
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER)
        except OSError as err:
            raise BinderIndexError(f"index rows {where} cannot be read: {err}") from None
        if len(head) != HEADER or head[:8] != ROWS_MAGIC:
            raise BinderIndexError(f"index rows {where} are not a binder rows file")
        count, d = (int(v) for v in np.frombuffer(head[8:], dtype="<u8"))
        if d != dim or os.path.getsize(path) != HEADER + count * (8 + 4 * d):
            raise BinderIndexError(f"index rows {where} hold {count} x {d} values in {os.path.getsize(path)} bytes; "
                                   f"expected {dim}-d rows")
        ids = np.fromfile(path, dtype="<i8", count=count, offset=HEADER)
        data = np.memmap(path, dtype="<f4", mode="r", offset=HEADER + 8 * count, shape=(count, d)) if count else \
            np.zeros((0, d), dtype=np.float32)
        return cls(ids, data)


def top_k(sims: np.ndarray, candidates: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` best candidates by score -> (scores (N, k), ids (N, k)), -1 past the valid ones."""
    n, size = sims.shape
    top = min(k, size)
    idx = np.argpartition(-sims, top - 1, axis=1)[:, :top]
    order = np.argsort(-np.take_along_axis(sims, idx, 1), axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, 1)
    scores, ids = np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)
    scores[:, :top], ids[:, :top] = np.take_along_axis(sims, idx, 1), np.take_along_axis(candidates, idx, 1)
    ids[~np.isfinite(scores)] = -1
    return scores, ids


def rows_name(vectors_name: str) -> str:
    """The rows file beside the codes file ``vectors-<g>.faiss``."""
    return vectors_name.rsplit(".", 1)[0] + ".rows"


# ----------------------------------------------------------------------------------------------
# The projection
# ----------------------------------------------------------------------------------------------

def projection_dims(sample: np.ndarray, energy: float = ENERGY) -> Tuple[int, Optional[np.ndarray]]:
    """(directions kept, their (d, D) basis or None for all) from a sample (N, D): the leading
    eigenvectors of the (uncentred) second moment, so that inner products are kept."""
    dim = sample.shape[1]
    moment = (sample.T.astype(np.float64) @ sample.astype(np.float64)) / max(1, len(sample))  # (D, D)
    values, vectors = np.linalg.eigh(moment)
    values, vectors = values[::-1].clip(0), vectors[:, ::-1]
    share = np.cumsum(values) / max(values.sum(), 1e-12)
    d = MIN_DIMS
    while d < dim and share[d - 1] < energy:
        d *= 2
    if d >= dim:
        return dim, None
    return d, np.ascontiguousarray(vectors[:, :d].T, dtype=np.float32)


class QuantizedIndex:
    """The ``ivf_sq8`` vectors of a faiss index: the :class:`~binder.index.engines.vectors.VectorIndex`
    interface (ids, add, remove, vectors, tune, search, save, load)."""

    def __init__(self, dim: int, kind: str = KIND, breadth: Optional[int] = None, index: Any = None,
                 rows: Optional[Rows] = None, rerank: Optional[int] = None) -> None:
        self.dim, self.kind, self.breadth, self.rerank = int(dim), KIND, breadth, rerank
        self.index = index  # None until trained by the first add
        self.rows = rows or Rows.empty(self.dim)  # as last written (memory-mapped), deleted ids included
        self.pending: Tuple[List[np.ndarray], List[np.ndarray]] = ([], [])  # rows added since (ids, vectors)
        self._added: Optional[Rows] = None  # the pending rows, sorted (made on first lookup)
        self.tombstones = np.zeros(0, dtype=np.int64)  # (never any: the lists remove at once)

    # ----- structure --------------------------------------------------------------------------

    @property
    def ivf(self) -> Any:
        """The inverted file (inside the projection when there is one)."""
        faiss = _faiss()
        return faiss.extract_index_ivf(self.index)

    @property
    def code_dims(self) -> int:
        return int(self.ivf.d)

    def memory_bytes(self) -> int:
        """Bytes the searchable index holds in memory: codes, ids, centroids, projection."""
        ivf = self.ivf
        projection = self.code_dims * self.dim * 4 if self.code_dims < self.dim else 0
        return int(ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4 + projection)

    def train(self, sample: np.ndarray, count: int) -> None:
        """Choose the projection and make the lists for ``count`` vectors from ``sample`` (N, D)."""
        faiss = _faiss()
        rng = np.random.default_rng(0)
        nlist = list_count(count, len(sample))
        take = np.sort(rng.choice(len(sample), min(len(sample), IVF_TRAIN_PER_LIST * nlist), replace=False))
        train = np.ascontiguousarray(sample[take], dtype=np.float32)
        d, basis = projection_dims(train[:20_000])
        ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                            faiss.METRIC_INNER_PRODUCT)
        if basis is None:
            index = ivf
        else:
            transform = faiss.LinearTransform(self.dim, d, False)
            faiss.copy_array_to_vector(basis.ravel(), transform.A)
            transform.is_trained = True
            index = faiss.IndexPreTransform(transform, ivf)
            ivf.this.disown()  # owned by the pre-transform from here on
            transform.this.disown()
            index.own_fields = True
        index.train(train)
        self.index = index
        log.info("ivf_sq8 index: %d lists, %d of %d directions, trained on %d vectors", nlist, d, self.dim, len(take))

    # ----- contents ---------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        faiss = _faiss()
        if self.index is None:
            return np.zeros(0, dtype=np.int64)
        ivf = self.ivf
        lists = ivf.invlists
        parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy() for i in range(ivf.nlist)
                 if lists.list_size(i)]
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise BinderInputError(f"vectors must be (N, {self.dim}), got {vectors.shape}")
        if self.index is None:
            self.train(vectors, len(vectors))
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.index.add_with_ids(vectors, ids)
        self.pending[0].append(ids)  # (held, not copied: the writer's own arrays)
        self.pending[1].append(vectors)
        self._added = None

    def remove(self, ids: np.ndarray) -> None:
        if self.index is not None:
            ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
            self.index.remove_ids(_faiss().IDSelectorArray(len(ids), _faiss().swig_ptr(ids)))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The exact float32 vectors of ``ids`` (N, D), every one in the index."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        pos, found = self.rows.find(ids)
        if found.any():
            out[found] = self.rows.data[pos[found]]
        if not found.all():
            if self._added is None:
                self._added = Rows.joined(*self.pending) if self.pending[0] else Rows.empty(self.dim)
            pos2, found2 = self._added.find(ids[~found])
            if not found2.all():
                raise BinderIndexError(f"the index holds no float32 row for ids {ids[~found][~found2][:5].tolist()}")
            out[~found] = self._added.data[pos2]
        return out

    def needs_rebuild(self) -> bool:
        """Grown or shrunk fourfold since the lists were made."""
        if self.index is None:
            return False
        want = list_count(len(self), len(self))
        return want >= 2 * self.ivf.nlist or 2 * want <= self.ivf.nlist

    # ----- search -----------------------------------------------------------------------------

    def _params(self, nprobe: int, allowed: Optional[np.ndarray] = None) -> Any:
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=min(self.ivf.nlist, nprobe))
        if allowed is not None:
            params.sel = faiss.IDSelectorBatch(allowed)
        if not isinstance(self.index, faiss.IndexPreTransform):
            return params
        outer = faiss.SearchParametersPreTransform()
        outer.index_params = params
        outer.keep = params  # (the wrapper does not own it)
        return outer

    def shortlist(self, queries: np.ndarray, size: int, nprobe: int,
                  allowed: Optional[np.ndarray] = None) -> np.ndarray:
        """Candidate ids (N, size) from the codes, best first; -1 where there are fewer."""
        return self.index.search(queries, size, params=self._params(nprobe, allowed))[1]

    def exact_scores(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Exact inner products (N, S) of each query with its candidates (-inf where an id is -1),
        reading the float32 rows of a few queries' candidates at a time."""
        n, size = candidates.shape
        sims = np.full((n, size), -np.inf, dtype=np.float32)
        step = max(1, 8192 // max(size, 1))
        for s in range(0, n, step):
            cand = candidates[s : s + step]
            valid = cand >= 0
            unique, inverse = np.unique(cand[valid], return_inverse=True)
            rows = self.vectors(unique)  # (U, D)
            owner = np.nonzero(valid)[0]  # (V,) query of each valid candidate, within the chunk
            part = np.full(cand.shape, -np.inf, dtype=np.float32)
            part[valid] = np.einsum("vd,vd->v", queries[s : s + step][owner], rows[inverse.reshape(-1)])
            sims[s : s + step] = part
        return sims

    def rescore(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Exact inner products of the candidates -> the top ``k`` (scores (N, k), ids (N, k))."""
        return top_k(self.exact_scores(queries, candidates), candidates, k)

    def shortlist_size(self, k: int) -> int:
        return max(k, int(math.ceil((self.rerank or RERANKS[2]) * k / 10)))

    def search(self, queries: np.ndarray, k: int,
               allowed: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by exact inner product among the shortlist -> (scores (N, k), ids (N, k))."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None and len(allowed) <= EXACT_SUBSET:
            return exact_subset(self, queries, k, allowed)
        if self.index is None or not len(self):
            return exact_subset(self, queries, k, np.zeros(0, dtype=np.int64))
        nprobe = self.breadth or NPROBES[len(NPROBES) // 2]
        nprobe = 2 * nprobe if allowed is not None else nprobe
        return self.rescore(queries, self.shortlist(queries, self.shortlist_size(k), nprobe, allowed), k)

    # ----- tuning -----------------------------------------------------------------------------

    def tune(self, k: int = 10, target: Optional[float] = None, seed: int = 0) -> Dict[str, Any]:
        """The cheapest (nprobe, shortlist) whose recall@k against exact search reaches ``target``
        on indexed items and on midpoints of two items -> the fields ``index.json`` records."""
        target = RECALL_TARGET if target is None else target
        live = self.ids()
        if len(live) < 2 * k:
            self.breadth, self.rerank = NPROBES[-1], RERANKS[-1]
            return {"search_breadth": self.breadth, "rerank": self.rerank, "ann_recall_at_10": None}
        rng = np.random.default_rng(seed)
        single = self.vectors(rng.choice(live, RECALL_QUERIES))
        a, b = rng.choice(live, size=(2, RECALL_QUERIES))
        mid = self.vectors(a) + self.vectors(b)
        mid /= np.linalg.norm(mid, axis=1, keepdims=True).clip(1e-12)
        probes = np.concatenate([single, mid])
        exact = exact_topk(self, probes, live, k)
        scale = max(1.0, k / 10)
        best: Optional[Tuple[float, int, int, float, float]] = None
        lists, per_list = self.ivf.nlist, len(self) / self.ivf.nlist
        for nprobe in [p for p in NPROBES if p <= lists] or [lists]:
            scan = (nprobe * per_list + lists) * self.code_dims  # code bytes a query reads
            if best is not None and scan >= best[0]:
                break  # wider searches only cost more
            found = self.shortlist(probes, int(RERANKS[-1] * scale), nprobe)
            sims = self.exact_scores(probes, found)
            for rerank in RERANKS:
                width = int(rerank * scale)
                top = top_k(sims[:, :width], found[:, :width], k)[1]
                hit = [len(set(e) & set(f)) / k for e, f in zip(exact.tolist(), top.tolist())]
                r_single, r_mid = float(np.mean(hit[: len(single)])), float(np.mean(hit[len(single):]))
                cost = scan + RERANK_COST * width * self.dim
                if min(r_single, r_mid) >= target:
                    if best is None or cost < best[0]:
                        best = (cost, nprobe, rerank, r_single, r_mid)
                    break  # longer shortlists at this nprobe only cost more
        if best is None:  # the widest search there is
            best = (0.0, nprobe, RERANKS[-1], r_single, r_mid)
            log.warning("ivf_sq8: recall@%d %.3f / %.3f below the target %.2f even at nprobe %d, shortlist %d",
                        k, r_single, r_mid, target, best[1], best[2])
        _, self.breadth, self.rerank, r_single, r_mid = best
        log.info("ivf_sq8 tuned: nprobe %d, shortlist %d: recall@%d %.4f on items, %.4f on midpoints",
                 self.breadth, self.rerank, k, r_single, r_mid)
        return {"search_breadth": self.breadth, "rerank": self.rerank, "ann_recall_at_10": r_mid,
                "ann_recall_items_at_10": r_single, "code_dims": self.code_dims}

    # ----- files ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the codes (the float32 rows go to :meth:`save_rows`)."""
        _faiss().write_index(self.index, str(path))

    def save_rows(self, path: Path) -> None:
        """Write the float32 rows of the live ids, then read them from that file (memory-mapped)."""
        live = self.ids()
        with open(path, "wb") as out:
            out.write(ROWS_MAGIC + np.array([len(live), self.dim], dtype="<u8").tobytes())
            out.write(np.ascontiguousarray(live, dtype="<i8").tobytes())
            for start in range(0, len(live), 50_000):
                out.write(self.vectors(live[start : start + 50_000]).astype("<f4", copy=False).tobytes())
        self.rows, self.pending, self._added = Rows.load(path, self.dim), ([], []), None

    @classmethod
    def load(cls, path: Path, kind: str, dim: int, breadth: Optional[int] = None,
             rerank: Optional[int] = None) -> "QuantizedIndex":
        index = read_index(path, dim)
        rows = Rows.load(path.with_name(rows_name(path.name)), dim)
        if len(rows.ids) != index.ntotal:
            raise BinderIndexError(f"index {str(path.parent)!r} is damaged: {len(rows.ids)} float32 rows for "
                                   f"{index.ntotal} coded vectors")
        return cls(dim, kind, breadth, index=index, rows=rows, rerank=rerank)


# ----------------------------------------------------------------------------------------------
# Every kind of faiss vectors
# ----------------------------------------------------------------------------------------------

def make(dim: int, kind: str) -> Any:
    """An empty index of ``kind`` (``flat``, ``ivf``, ``hnsw`` or ``ivf_sq8``)."""
    return QuantizedIndex(dim) if kind == KIND else VectorIndex(dim, kind)


def load(path: Path, kind: str, dim: int, manifest: Dict[str, Any]) -> Any:
    """The vectors of an index folder, as ``index.json`` describes them."""
    if kind == KIND:
        return QuantizedIndex.load(path, kind, dim, manifest.get("search_breadth"), manifest.get("rerank"))
    return VectorIndex.load(path, kind, dim, manifest.get("search_breadth"))


def rebuild(source: Any, kind: str) -> Any:
    """A fresh, untuned index of ``kind`` holding the live vectors of ``source`` (any kind)."""
    live = np.setdiff1d(source.ids(), source.tombstones)
    fresh = make(source.dim, kind)
    if kind in ("ivf", KIND) and len(live):
        sample = np.random.default_rng(0).choice(live, min(len(live), IVF_TRAIN_PER_LIST * ivf_lists(len(live))),
                                                 replace=False)
        fresh.train(source.vectors(np.sort(sample)), len(live))
    for start in range(0, len(live), 50_000):
        part = live[start : start + 50_000]
        fresh.add(part, source.vectors(part))
    return fresh
