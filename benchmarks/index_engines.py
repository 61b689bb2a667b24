"""Which vector engine binder.Index embeds, by measurement: FAISS, usearch, LanceDB.

200,000 clustered unit vectors of 1,024 dimensions (2,000 Gaussian clusters, the shape of real
embedding collections), 1,000 held-out queries from the same distribution and 500 midpoints of
two random indexed vectors (what a composed image + sound query looks like), on ONE CPU core (the
process is pinned with sched_setaffinity before numpy loads, and every engine is asked for one
thread). For each engine and setting: build time, queries/s (batches of 100) and recall@10
against exact search on both query sets. Then binder's whole search path
(``Index.search_embeddings``: engine + metadata rows + result objects; query embedding excluded)
on the index binder builds by default, against the raw engine on the same index with the same
parameters. Prints a table and writes ``benchmarks/index_engines.json``.

    python benchmarks/index_engines.py                  # the full comparison (about 25 minutes here)
    python benchmarks/index_engines.py --n 20000        # a quick look
    python benchmarks/index_engines.py --engines faiss  # one engine
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List


def pin_one_core() -> None:
    """Pin the process to one core and ask every thread pool for one thread (called when run as a
    script, before numpy, FAISS or torch start their pools)."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("LANCE_LOG", "error")  # LanceDB's per-query deprecation notices


if __name__ == "__main__":
    pin_one_core()

import numpy as np  # noqa: E402  (after pinning)

K, BATCH = 10, 100
MIDPOINTS = 500  # composed-query-like probes: midpoints of two random indexed vectors


@dataclass
class Workload:
    """The indexed vectors, held-out queries and midpoint queries, with their exact top-k."""

    base: np.ndarray
    queries: np.ndarray
    truth: np.ndarray
    mid: np.ndarray
    mid_truth: np.ndarray


def clustered(n: int, q: int, dim: int, clusters: int, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    def draw(m):
        x = centres[rng.integers(clusters, size=m)] + 0.8 * rng.normal(size=(m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    base, queries = draw(n), draw(q)
    a, b = rng.integers(n, size=(2, MIDPOINTS))
    mid = base[a] + base[b]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    return Workload(base, queries, exact_topk(base, queries, K), mid, exact_topk(base, mid, K))


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = []
    for s in range(0, len(queries), 100):
        sims = queries[s : s + 100] @ base.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out.append(idx)
    return np.concatenate(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def timed_batches(search: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple:
    """``search`` over ``queries`` in batches of ``BATCH`` after a warm-up -> (its outputs, queries/s)."""
    search(queries[:BATCH])  # warm-up
    start = time.perf_counter()
    out = [search(queries[s : s + BATCH]) for s in range(0, len(queries), BATCH)]
    return out, len(queries) / (time.perf_counter() - start)


def timed_queries(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple:
    """``search`` returns (B, k) ids -> (all ids (Q, k), queries/s)."""
    out, qps = timed_batches(search, queries)
    return np.concatenate(out), qps


def measure(rows: List[Dict[str, Any]], w: Workload, search: Callable[[np.ndarray], np.ndarray], limit: int = 0,
            **row: Any) -> Dict[str, Any]:
    """Time ``search`` (a batch of queries -> (B, k) ids) on the held-out queries (the first
    ``limit`` when given), score recall@10 on them and on the midpoints; print and keep the row."""
    n = limit or len(w.queries)
    found, qps = timed_queries(search, w.queries[:n])
    mid = np.concatenate([search(w.mid[s : s + BATCH]) for s in range(0, min(n, len(w.mid)), BATCH)])
    row.update(qps=qps, recall=recall(found, w.truth[:n]), recall_mid=recall(mid, w.mid_truth[: len(mid)]))
    rows.append(row)
    print(f"{row['engine']:<13} {row['setting']:<44} build {row['build_s']:6.1f} s  {row['qps']:7.0f} q/s  "
          f"recall@10 {row['recall']:.4f}  midpoints {row['recall_mid']:.4f}", file=sys.stderr, flush=True)
    return row


# ----------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------

def run_faiss(w: Workload, rows: List[Dict[str, Any]]) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    d = w.base.shape[1]
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(w.base)
    bt = time.perf_counter() - t
    measure(rows, w, lambda q: flat.search(q, K)[1], engine="faiss", setting="flat (exact)", build_s=bt)
    for m, efc in ((32, 40), (32, 80)):
        t = time.perf_counter()
        h = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = efc
        h.add(w.base)
        bt = time.perf_counter() - t
        for ef in (16, 32, 64, 128, 256):
            h.hnsw.efSearch = ef
            measure(rows, w, lambda q: h.search(q, K)[1], engine="faiss", setting=f"HNSW M={m} efC={efc} efSearch={ef}",
                    build_s=bt)
    t = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, 1024, faiss.METRIC_INNER_PRODUCT)
    ivf.train(w.base[np.random.default_rng(1).choice(len(w.base), min(len(w.base), 51_200), replace=False)])
    ivf.add(w.base)
    bt = time.perf_counter() - t
    for nprobe in (2, 4, 8, 16):
        ivf.nprobe = nprobe
        measure(rows, w, lambda q: ivf.search(q, K)[1], engine="faiss", setting=f"IVF1024 nprobe={nprobe}", build_s=bt)


def run_usearch(w: Workload, rows: List[Dict[str, Any]]) -> None:
    from usearch.index import Index as UIndex

    keys = np.arange(len(w.base), dtype=np.uint64)
    t = time.perf_counter()
    idx = UIndex(ndim=w.base.shape[1], metric="ip", dtype="f32", connectivity=32, expansion_add=80)
    idx.add(keys, w.base, threads=1)
    bt = time.perf_counter() - t
    for ef in (16, 32, 64, 128):
        idx.expansion_search = ef
        measure(rows, w, lambda q: idx.search(q, K, threads=1).keys.astype(np.int64), engine="usearch",
                setting=f"HNSW M=32 efC=80 ef={ef}", build_s=bt)


def run_lancedb(w: Workload, rows: List[Dict[str, Any]]) -> None:
    import lancedb
    import pyarrow as pa
    from lancedb.index import HnswSq, IvfPq

    folder = tempfile.mkdtemp(prefix="lance-bench-")
    try:
        db = lancedb.connect(folder)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(w.base.reshape(-1)), w.base.shape[1])
        table = db.create_table("v", pa.table({"id": np.arange(len(w.base)), "vector": vec}))
        for index_type, config in (("IVF_HNSW_SQ", HnswSq(distance_type="dot", num_partitions=64)),
                                   ("IVF_PQ", IvfPq(distance_type="dot", num_partitions=64, num_sub_vectors=64))):
            t = time.perf_counter()
            table.create_index("vector", config=config, replace=True)
            bt = time.perf_counter() - t
            for nprobes in (4, 16):
                def search(q):  # one call per query: LanceDB's Python API has no batch search
                    return np.array([table.search(v).nprobes(nprobes).refine_factor(4).limit(K).select(["id"])
                                     .to_arrow()["id"].to_numpy() for v in q])
                measure(rows, w, search, limit=300, engine="lancedb",
                        setting=f"{index_type} 64 partitions nprobes={nprobes} refine=4", build_s=bt)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# binder's search path against the raw engine
# ----------------------------------------------------------------------------------------------

def run_binder(w: Workload, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    import faiss
    import torch

    from binder.anchor import OpenClipAnchor
    from binder.index import Index
    from binder.index.items import EmbedReport, Item
    from binder.model import BindModel

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    model = BindModel(OpenClipAnchor(model="binder-digits"), {})
    model.anchor.embed_dim = w.base.shape[1]  # the index records the size; no query is embedded here
    items = [Item(f"/data/item{i:06d}.png", {"shard": i % 16, "label": f"c{i % 100}"}) for i in range(len(w.base))]
    folder = Path(tempfile.mkdtemp(prefix="binder-bench-")) / "idx"
    try:
        t = time.perf_counter()
        idx = Index.from_embeddings(model, EmbedReport(items, w.base, []), "image", folder)
        build = time.perf_counter() - t
        del items  # 200k Python objects the benchmark made would slow every garbage collection below
        gc.collect()
        engine = idx.engine.vectors
        params = engine.search_params(K)  # what binder's search passes to FAISS
        raw_qps = binder_qps = 0.0
        for _ in range(3):  # interleaved rounds, the best of each (the same treatment for both)
            raw_found, qps = timed_queries(lambda q: engine.index.search(q, K, params=params)[1], w.queries)
            raw_qps = max(raw_qps, qps)
            results, qps = timed_batches(lambda q: idx.search_embeddings(q, k=K), w.queries)  # lists of Hits
            binder_qps = max(binder_qps, qps)
            hits_found = np.array([hits.ids for batch in results for hits in batch])  # after the clock stops
        m = idx.manifest
        result = {"kind": m["kind"], "search_breadth": m["search_breadth"], "build_s": build,
                  "recorded_recall_midpoints": m["ann_recall_at_10"], "raw_qps": raw_qps, "binder_qps": binder_qps,
                  "ratio": binder_qps / raw_qps, "raw_recall": recall(raw_found, w.truth),
                  "binder_recall": recall(hits_found, w.truth),
                  "index_bytes": sum(p.stat().st_size for p in folder.iterdir())}
        breadth = {"ivf": "nprobe", "hnsw": "efSearch"}.get(m["kind"])
        setting = f"default ({m['kind']}" + (f", tuned {breadth}={m['search_breadth']})" if breadth else ")")
        row = measure(rows, w, lambda q: np.array([h.ids for h in idx.search_embeddings(q, k=K)]),
                      engine="binder.Index", setting=setting, build_s=build)
        row["qps"] = binder_qps  # the best of the interleaved rounds above
        idx.close()
        return result
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--engines", default="faiss,usearch,lancedb,binder")
    parser.add_argument("--out", default=str(Path(__file__).with_name("index_engines.json")))
    args = parser.parse_args(argv)
    w = clustered(args.n, args.queries, args.dim, clusters=max(10, args.n // 100))
    rows: List[Dict[str, Any]] = []
    result: Dict[str, Any] = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": K, "cores": 1}
    runners = {"faiss": run_faiss, "usearch": run_usearch, "lancedb": run_lancedb}
    for name in args.engines.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        if name == "binder":
            result["binder_path"] = run_binder(w, rows)
        else:
            runners[name](w, rows)
    result["rows"] = rows
    print(f"\n{'engine':<13} {'setting':<44} {'build s':>8} {'q/s':>8} {'recall@10':>10} {'midpoints':>10}")
    for r in rows:
        print(f"{r['engine']:<13} {r['setting']:<44} {r['build_s']:>8.1f} {r['qps']:>8.0f} {r['recall']:>10.4f} "
              f"{r['recall_mid']:>10.4f}")
    if "binder_path" in result:
        b = result["binder_path"]
        print(f"\nbinder's search path: {b['binder_qps']:.0f} q/s vs the raw engine {b['raw_qps']:.0f} q/s on the same "
              f"index ({100 * b['ratio']:.1f}%), recall@10 {b['binder_recall']:.4f}, built in {b['build_s']:.0f} s")
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
