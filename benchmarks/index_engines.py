"""Which vector engine binder.Index embeds, by measurement: FAISS, usearch, LanceDB.

200,000 clustered unit vectors of 1,024 dimensions (2,000 Gaussian clusters, the shape of real
embedding collections) and 1,000 held-out queries from the same distribution, on ONE CPU core
(the process is pinned with sched_setaffinity, and every engine is asked for one thread).
For each engine and setting: build time, queries/s (batches of 100), recall@10 against exact
search. Then binder's whole search path (``Index.search_embeddings``: engine + metadata rows +
result objects; query embedding excluded) on the index binder builds by default, against the raw
engine on the same index. Prints a table and writes ``benchmarks/index_engines.json``.

    python benchmarks/index_engines.py                  # the full comparison (about 20 minutes here)
    python benchmarks/index_engines.py --n 20000        # a quick look
    python benchmarks/index_engines.py --engines faiss  # one engine
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

K, BATCH = 10, 100


def pin_one_core() -> None:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[var] = "1"


def clustered(n: int, q: int, dim: int, clusters: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    def draw(m):
        x = centres[rng.integers(clusters, size=m)] + 0.8 * rng.normal(size=(m, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return draw(n), draw(q)


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = []
    for s in range(0, len(queries), 100):
        sims = queries[s : s + 100] @ base.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out.append(idx)
    return np.concatenate(out)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def timed_queries(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray) -> tuple:
    search(queries[:BATCH])  # warm-up
    start = time.perf_counter()
    found = np.concatenate([search(queries[s : s + BATCH]) for s in range(0, len(queries), BATCH)])
    return found, len(queries) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------

def run_faiss(base, queries, truth, rows: List[Dict[str, Any]]) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    d = base.shape[1]
    t = time.perf_counter(); flat = faiss.IndexFlatIP(d); flat.add(base); bt = time.perf_counter() - t
    found, qps = timed_queries(lambda q: flat.search(q, K)[1], queries)
    rows.append(dict(engine="faiss", setting="flat (exact)", build_s=bt, qps=qps, recall=recall(found, truth)))
    for m, efc in ((32, 40), (32, 80)):
        t = time.perf_counter()
        h = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT); h.hnsw.efConstruction = efc; h.add(base)
        bt = time.perf_counter() - t
        for ef in (16, 32, 64, 128):
            h.hnsw.efSearch = ef
            found, qps = timed_queries(lambda q: h.search(q, K)[1], queries)
            rows.append(dict(engine="faiss", setting=f"HNSW M={m} efC={efc} efSearch={ef}", build_s=bt, qps=qps,
                             recall=recall(found, truth)))
    t = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, 1024, faiss.METRIC_INNER_PRODUCT)
    ivf.train(base[np.random.default_rng(1).choice(len(base), min(len(base), 50_000), replace=False)]); ivf.add(base)
    bt = time.perf_counter() - t
    for nprobe in (4, 8, 16):
        ivf.nprobe = nprobe
        found, qps = timed_queries(lambda q: ivf.search(q, K)[1], queries)
        rows.append(dict(engine="faiss", setting=f"IVF1024 nprobe={nprobe}", build_s=bt, qps=qps,
                         recall=recall(found, truth)))


def run_usearch(base, queries, truth, rows: List[Dict[str, Any]]) -> None:
    from usearch.index import Index as UIndex

    keys = np.arange(len(base), dtype=np.uint64)
    t = time.perf_counter()
    idx = UIndex(ndim=base.shape[1], metric="ip", dtype="f32", connectivity=32, expansion_add=80)
    idx.add(keys, base, threads=1)
    bt = time.perf_counter() - t
    for ef in (16, 32, 64, 128):
        idx.expansion_search = ef
        found, qps = timed_queries(lambda q: idx.search(q, K, threads=1).keys.astype(np.int64), queries)
        rows.append(dict(engine="usearch", setting=f"HNSW M=32 efC=80 ef={ef}", build_s=bt, qps=qps,
                         recall=recall(found, truth)))


def run_lancedb(base, queries, truth, rows: List[Dict[str, Any]]) -> None:
    import lancedb
    import pyarrow as pa

    folder = tempfile.mkdtemp(prefix="lance-bench-")
    try:
        db = lancedb.connect(folder)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1)), base.shape[1])
        table = db.create_table("v", pa.table({"id": np.arange(len(base)), "vector": vec}))
        for index_type, extra in (("IVF_HNSW_SQ", {}), ("IVF_PQ", {"num_sub_vectors": 64})):
            t = time.perf_counter()
            table.create_index(metric="dot", vector_column_name="vector", index_type=index_type, num_partitions=64,
                               replace=True, **extra)
            bt = time.perf_counter() - t
            for nprobes in (4, 16):
                def search(q):
                    return np.array([table.search(v).nprobes(nprobes).refine_factor(4).limit(K).select(["id"])
                                     .to_arrow()["id"].to_numpy() for v in q])
                found, qps = timed_queries(search, queries[:300])
                rows.append(dict(engine="lancedb", setting=f"{index_type} 64 partitions nprobes={nprobes} refine=4",
                                 build_s=bt, qps=qps, recall=recall(found, truth[:300])))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# binder's search path against the raw engine
# ----------------------------------------------------------------------------------------------

def run_binder(base, queries, truth, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    import faiss
    import torch

    from binder.anchor import OpenClipAnchor
    from binder.index import Index
    from binder.index.engine import EF_SEARCH
    from binder.index.items import EmbedReport, Item
    from binder.model import BindModel

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    model = BindModel(OpenClipAnchor(model="binder-digits"), {})
    model.anchor.embed_dim = base.shape[1]  # the index records the size; no query is embedded here
    items = [Item(f"/data/item{i:06d}.png", {"shard": i % 16, "label": f"c{i % 100}"}) for i in range(len(base))]
    folder = Path(tempfile.mkdtemp(prefix="binder-bench-")) / "idx"
    try:
        t = time.perf_counter()
        idx = Index.from_embeddings(model, EmbedReport(items, base, []), "image", folder)
        build = time.perf_counter() - t
        engine = idx.backend.engine
        params = faiss.SearchParametersHNSW(efSearch=EF_SEARCH)
        raw_found, raw_qps = timed_queries(lambda q: engine.index.search(q, K, params=params)[1], queries)
        hits_found, binder_qps = timed_queries(
            lambda q: np.array([h.ids for h in idx.search_embeddings(q, k=K)]), queries)
        result = {"kind": idx.manifest["kind"], "build_s": build, "recorded_recall": idx.manifest["ann_recall_at_10"],
                  "raw_qps": raw_qps, "binder_qps": binder_qps, "ratio": binder_qps / raw_qps,
                  "raw_recall": recall(raw_found, truth), "binder_recall": recall(hits_found, truth),
                  "index_bytes": sum(p.stat().st_size for p in folder.iterdir())}
        rows.append(dict(engine="binder.Index", setting=f"default ({result['kind']}, efSearch={EF_SEARCH})",
                         build_s=build, qps=binder_qps, recall=result["binder_recall"]))
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
    pin_one_core()
    base, queries = clustered(args.n, args.queries, args.dim, clusters=max(10, args.n // 100))
    truth = exact_topk(base, queries, K)
    rows: List[Dict[str, Any]] = []
    result: Dict[str, Any] = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": K, "cores": 1}
    runners = {"faiss": run_faiss, "usearch": run_usearch, "lancedb": run_lancedb}
    for name in args.engines.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        if name == "binder":
            result["binder_path"] = run_binder(base, queries, truth, rows)
        else:
            runners[name](base, queries, truth, rows)
        for r in rows:
            print(f"{r['engine']:<13} {r['setting']:<48} build {r['build_s']:7.1f} s  {r['qps']:8.0f} q/s  "
                  f"recall@10 {r['recall']:.4f}", file=sys.stderr, flush=True) if r is rows[-1] else None
    result["rows"] = rows
    print(f"\n{'engine':<13} {'setting':<48} {'build s':>8} {'q/s':>8} {'recall@10':>10}")
    for r in rows:
        print(f"{r['engine']:<13} {r['setting']:<48} {r['build_s']:>8.1f} {r['qps']:>8.0f} {r['recall']:>10.4f}")
    if "binder_path" in result:
        b = result["binder_path"]
        print(f"\nbinder's search path: {b['binder_qps']:.0f} q/s vs the raw engine {b['raw_qps']:.0f} q/s on the same "
              f"index ({100 * b['ratio']:.1f}%), recall@10 {b['binder_recall']:.4f}, built in {b['build_s']:.0f} s")
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
