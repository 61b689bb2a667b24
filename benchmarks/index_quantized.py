"""binder's compressed index (``ivf_sq8``) against today's float32 inverted file, exact search and
the raw FAISS engine, on one CPU core and three shapes of data.

Shapes (all unit vectors, ``--dim`` 1024):

* ``clustered``: the generator of ``benchmarks/index_engines.py`` (Gaussian clusters of equal size);
* ``lowrank``: embedding-like data of low intrinsic dimension (64 latent directions mapped into
  1024, a little isotropic noise) in clusters of Zipf-distributed sizes;
* ``isotropic``: nearly isotropic vectors (a weak 64-d structure under full-rank noise), where
  every engine has to search wide.

For each: held-out queries from the same distribution and midpoints of two indexed vectors (the
shape of a composed query), recall@10 against exact search on both, queries/s in batches of 100
through ``Index.search_embeddings`` (binder's whole search path), and the memory the searchable
index holds. Rows: ``binder ivf`` (kind="ivf": today's default above 100k), ``binder ivf_sq8``
(what kind="auto" builds from 100k vectors), raw FAISS IVF-Flat at several nprobe, exact search. Writes
``benchmarks/index_quantized-<shape>-<n>.json``.

    python benchmarks/index_quantized.py --shape lowrank --n 200000
    python benchmarks/index_quantized.py --shape clustered --n 1000000   # about 10 GB of memory
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

if __name__ == "__main__":  # one core and one thread per pool, before numpy and FAISS start theirs
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"

sys.path.insert(0, str(Path(__file__).parent))
from index_engines import (  # noqa: E402
    K,
    MIDPOINTS,
    Workload,
    clustered,
    exact_topk,
    recall,
    timed_queries,
)

import numpy as np  # noqa: E402


def _finish(base: np.ndarray, queries: np.ndarray, rng: np.random.Generator) -> Workload:
    a, b = rng.integers(len(base), size=(2, MIDPOINTS))
    mid = base[a] + base[b]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    return Workload(base, queries, exact_topk(base, queries, K), mid, exact_topk(base, mid, K))


def lowrank(n: int, q: int, dim: int, latent: int = 64, noise: float = 0.02, seed: int = 0) -> Workload:
    """Low intrinsic dimension, clusters of Zipf-distributed sizes (n / 200 clusters)."""
    rng = np.random.default_rng(seed)
    clusters = max(10, n // 200)
    basis = rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = rng.normal(size=(clusters, latent)).astype(np.float32)
    sizes = 1.0 / np.arange(1, clusters + 1) ** 1.1
    spread = rng.uniform(0.3, 0.8, size=clusters).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), dtype=np.float32)
        for s in range(0, m, 50_000):
            c = rng.choice(clusters, size=min(50_000, m - s), p=sizes / sizes.sum())
            z = centres[c] + spread[c, None] * rng.normal(size=(len(c), latent)).astype(np.float32)
            x = z @ basis + noise * rng.normal(size=(len(c), dim)).astype(np.float32)
            out[s : s + len(c)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return _finish(draw(n), draw(q), rng)


def isotropic(n: int, q: int, dim: int, latent: int = 64, seed: int = 0) -> Workload:
    """Nearly isotropic: full-rank Gaussian noise over a weak 64-d structure."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), dtype=np.float32)
        for s in range(0, m, 50_000):
            c = min(50_000, m - s)
            x = rng.normal(size=(c, latent)).astype(np.float32) @ basis + rng.normal(size=(c, dim)).astype(np.float32)
            out[s : s + c] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return _finish(draw(n), draw(q), rng)


SHAPES: Dict[str, Callable[..., Workload]] = {
    "clustered": lambda n, q, dim: clustered(n, q, dim, clusters=max(10, n // 100)),
    "lowrank": lowrank,
    "isotropic": isotropic,
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def row(rows: List[Dict[str, Any]], w: Workload, name: str, search: Callable[[np.ndarray], np.ndarray],
        **extra: Any) -> Dict[str, Any]:
    """Time ``search`` on the held-out queries (best of 2 rounds) and on the midpoints; recall@10."""
    found, qps = timed_queries(search, w.queries)
    found, qps2 = timed_queries(search, w.queries)
    mid, qps_mid = timed_queries(search, w.mid)
    r = {"setting": name, "qps": max(qps, qps2), "qps_midpoints": qps_mid, "recall": recall(found, w.truth),
         "recall_mid": recall(mid, w.mid_truth), **extra}
    rows.append(r)
    mem = f"  memory {r['memory_mb']:7.1f} MB" if "memory_mb" in r else ""
    print(f"{name:<46} {r['qps']:8.0f} q/s (midpoints {qps_mid:7.0f})  recall@10 {r['recall']:.4f}  midpoints "
          f"{r['recall_mid']:.4f}{mem}", file=sys.stderr, flush=True)
    return r


def run_binder(w: Workload, rows: List[Dict[str, Any]], kind: str, label: str) -> None:
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
    folder = Path(tempfile.mkdtemp(prefix="binder-bench-")) / "idx"
    try:
        items = [Item(f"/data/item{i:07d}.png", {"shard": i % 16}) for i in range(len(w.base))]
        start = time.perf_counter()
        idx = Index.from_embeddings(model, EmbedReport(items, w.base, []), "image", folder, kind=kind)
        build = time.perf_counter() - start
        del items
        gc.collect()
        vec, m = idx.engine.vectors, idx.manifest
        memory = vec.memory_bytes() if hasattr(vec, "memory_bytes") else (folder / f"vectors-{m['generation']}.faiss"
                                                                          ).stat().st_size
        setting = f"{label} (nprobe {m['search_breadth']}" + (f", shortlist {m['rerank']}, {vec.code_dims} dims)"
                                                              if "rerank" in m else ")")
        row(rows, w, setting, lambda q: np.array([h.ids for h in idx.search_embeddings(q, k=K)]), build_s=build,
            memory_mb=memory / 2 ** 20, float32_mb=w.base.nbytes / 2 ** 20, kind=m["kind"],
            tuned={key: m.get(key) for key in ("search_breadth", "rerank", "code_dims", "ann_recall_at_10",
                                               "ann_recall_items_at_10")})
        idx.close()
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def run_raw(w: Workload, rows: List[Dict[str, Any]], nprobes: List[int]) -> None:
    """Exact search and raw FAISS IVF-Flat (1024 lists per 200k, as binder sizes them)."""
    import faiss

    from binder.index.engines.vectors import ivf_lists

    faiss.omp_set_num_threads(1)
    d = w.base.shape[1]
    if len(w.base) <= 200_000:
        flat = faiss.IndexFlatIP(d)
        flat.add(w.base)
        row(rows, w, "exact search (faiss flat)", lambda q: flat.search(q, K)[1], memory_mb=w.base.nbytes / 2 ** 20)
        del flat
    nlist = ivf_lists(len(w.base))
    start = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(w.base[np.random.default_rng(1).choice(len(w.base), min(len(w.base), 50 * nlist), replace=False)])
    ivf.add(w.base)
    build = time.perf_counter() - start
    for nprobe in nprobes:
        ivf.nprobe = nprobe
        row(rows, w, f"raw faiss IVF{nlist},Flat nprobe={nprobe}", lambda q: ivf.search(q, K)[1], build_s=build,
            memory_mb=w.base.nbytes / 2 ** 20)


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="lowrank")
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--runs", default="ivf,ivf_sq8,raw", help="which rows: ivf, ivf_sq8, raw")
    parser.add_argument("--nprobes", default="8,32,128")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    w = SHAPES[args.shape](args.n, args.queries, args.dim)
    print(f"== {args.shape}: {args.n} x {args.dim}, made in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows: List[Dict[str, Any]] = []
    runs = args.runs.split(",")
    if "ivf" in runs:
        run_binder(w, rows, "ivf", "binder ivf (today's default)")
    if "ivf_sq8" in runs:
        run_binder(w, rows, "ivf_sq8", "binder ivf_sq8")
    if "raw" in runs:
        run_raw(w, rows, [int(p) for p in args.nprobes.split(",")])
    result = {"shape": args.shape, "n": args.n, "dim": args.dim, "queries": args.queries, "k": K, "cores": 1,
              "peak_rss_mb": _rss_mb(), "rows": rows}
    today = next((r for r in rows if r.get("kind") == "ivf"), None)
    new = next((r for r in rows if r.get("kind") == "ivf_sq8"), None)
    if today and new:
        result["speedup"] = new["qps"] / today["qps"]
        result["speedup_midpoints"] = new["qps_midpoints"] / today["qps_midpoints"]
        result["memory_share"] = new["memory_mb"] / new["float32_mb"]
        print(f"\nivf_sq8 against today's ivf: x{result['speedup']:.2f} queries/s (midpoints "
              f"x{result['speedup_midpoints']:.2f}), recall@10 {new['recall']:.4f} / {new['recall_mid']:.4f} vs "
              f"{today['recall']:.4f} / {today['recall_mid']:.4f}, memory {100 * result['memory_share']:.1f}% of "
              "float32")
    out = args.out or str(Path(__file__).with_name(f"index_quantized-{args.shape}-{args.n}.json"))
    Path(out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
