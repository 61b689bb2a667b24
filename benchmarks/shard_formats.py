"""Which streaming shard format `binder shards` writes: WebDataset, litdata or MosaicML streaming.

Each format packs the same synthetic pairs (a 16-bit WAV file of a given length, a float16
anchor embedding of 1,024 values, an id and a label: what `binder shards pack` stores), then the
script measures, on local disk:

* pack time (samples/s);
* shuffled read rate with the format's own loader, 0 and 2 workers, batch 64 (samples/s), the
  samples deserialised but not decoded (decoding costs the same whatever the container);
* mid-epoch resumption: read 5 batches, take the loader's state, read on with a fresh loader
  from that state; ``exact`` when the two parts hold every sample once, no repeat, no gap.

The ratio column is each format's read rate against WebDataset's in the same run. Run it twice
with different sample sizes (``--seconds``): short clips stress per-sample overhead, long ones
bandwidth. ``pip install webdataset litdata mosaicml-streaming`` first.

    python benchmarks/shard_formats.py --samples 4000 --seconds 1 --json benchmarks/shard_formats.json
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np


def make_samples(n: int, seconds: float) -> List[Dict[str, Any]]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        sf.write(buf, (rng.normal(0, 0.1, int(16000 * seconds))).astype(np.float32), 16000, format="WAV",
                 subtype="PCM_16")
        out.append({"id": f"s{i:07d}", "label": str(i % 10), "audio": buf.getvalue(),
                    "image_embedding": rng.normal(size=(1, 1024)).astype(np.float16)})
    return out


# ----- WebDataset ---------------------------------------------------------------------------------

def wds_pack(samples: List[Dict[str, Any]], out: Path) -> None:
    import webdataset as wds

    out.mkdir(parents=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxsize=64 << 20, verbose=0) as sink:
        for s in samples:
            emb = io.BytesIO()
            np.save(emb, s["image_embedding"])
            sink.write({"__key__": s["id"], "wav": s["audio"], "npy": emb.getvalue(), "cls": s["label"].encode()})


def wds_loader(out: Path, workers: int, state: Any = None) -> Any:
    import webdataset as wds
    from torch.utils.data import DataLoader

    urls = sorted(str(p) for p in out.glob("*.tar"))
    ds = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node, empty_check=False)
          .shuffle(1000).map(lambda s: s["__key__"]).batched(64, collation_fn=list))
    return DataLoader(ds, batch_size=None, num_workers=workers)


# ----- litdata ------------------------------------------------------------------------------------

def _lit_fn(sample: Dict[str, Any]) -> Dict[str, Any]:
    return sample


def lit_pack(samples: List[Dict[str, Any]], out: Path) -> None:
    from litdata import optimize

    optimize(fn=_lit_fn, inputs=samples, output_dir=str(out), chunk_bytes="64MB", num_workers=1, verbose=False,
             start_method="fork")


def _id_list(batch: List[Dict[str, Any]]) -> List[str]:
    """Collate a batch to its ids: every format's worker deserialises the samples, and only the
    ids cross to the main process (as WebDataset's pipeline above does)."""
    return [s["id"] for s in batch]


def _ids(batch: Any) -> List[str]:
    return list(batch["id"]) if isinstance(batch, dict) else list(batch)


def lit_loader(out: Path, workers: int, state: Any = None) -> Any:
    from litdata import StreamingDataLoader, StreamingDataset

    ds = StreamingDataset(str(out), shuffle=True, drop_last=False, seed=0)
    dl = StreamingDataLoader(ds, batch_size=64, num_workers=workers, collate_fn=_id_list)
    if state is not None:
        dl.load_state_dict(state)
    return dl


# ----- MosaicML streaming -------------------------------------------------------------------------

def mds_pack(samples: List[Dict[str, Any]], out: Path) -> None:
    from streaming import MDSWriter

    columns = {"id": "str", "label": "str", "audio": "bytes", "image_embedding": "ndarray"}
    with MDSWriter(out=str(out), columns=columns, size_limit=64 << 20) as writer:
        for s in samples:
            writer.write(s)


def mds_loader(out: Path, workers: int, state: Any = None) -> Any:
    from streaming import StreamingDataLoader, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=str(out), shuffle=True, shuffle_seed=0, batch_size=64)
    dl = StreamingDataLoader(ds, batch_size=64, num_workers=workers, collate_fn=_id_list)
    if state is not None:
        dl.load_state_dict(state)
    return dl


FORMATS: Dict[str, Dict[str, Callable]] = {
    "webdataset": {"pack": wds_pack, "loader": wds_loader},
    "litdata": {"pack": lit_pack, "loader": lit_loader},
    "mosaicml-streaming": {"pack": mds_pack, "loader": mds_loader},
}


def read_rate(loader_fn: Callable, out: Path, workers: int, n: int) -> float:
    loader = loader_fn(out, workers)
    it = iter(loader)
    first = _ids(next(it))  # start-up (workers, index) not counted
    start, seen = time.perf_counter(), len(first)
    for batch in it:
        seen += len(_ids(batch))
    return (seen - len(first)) / (time.perf_counter() - start)


def resume_check(loader_fn: Callable, out: Path, n: int) -> str:
    loader = loader_fn(out, 0)
    if not hasattr(loader, "state_dict"):
        return "none built in"
    before: List[str] = []
    for i, batch in enumerate(loader):
        before += _ids(batch)
        if i == 4:
            break
    state = loader.state_dict()
    after = [x for batch in loader_fn(out, 0, state) for x in _ids(batch)]
    both = before + after
    if len(both) == n and len(set(both)) == n:
        return "exact"
    return f"{len(both) - len(set(both))} repeated, {n - len(set(both))} missing"


def run(samples: int, seconds: float) -> Dict[str, Any]:
    data = make_samples(samples, seconds)
    results: Dict[str, Any] = {"samples": samples, "seconds_per_clip": seconds,
                               "bytes_per_sample": len(data[0]["audio"]) + 2048, "formats": {}}
    root = Path(tempfile.mkdtemp(prefix="shard-formats-"))
    try:
        for name, fns in FORMATS.items():
            out = root / name
            start = time.perf_counter()
            fns["pack"](data, out)
            pack = samples / (time.perf_counter() - start)
            rates = {w: read_rate(fns["loader"], out, w, samples) for w in (0, 2)}
            results["formats"][name] = {"pack_samples_per_s": pack, "read_0_workers": rates[0],
                                        "read_2_workers": rates[2], "resume": resume_check(fns["loader"], out, samples),
                                        "files": len(list(out.rglob("*")))}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def table(results: Dict[str, Any]) -> str:
    base = results["formats"]["webdataset"]["read_2_workers"]
    lines = [f"{results['samples']} samples of {results['seconds_per_clip']} s WAV + float16 embedding",
             "| format | pack samples/s | read, 0 workers | read, 2 workers | vs WebDataset (2 workers) "
             "| mid-epoch resume |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, r in results["formats"].items():
        lines.append(f"| {name} | {r['pack_samples_per_s']:,.0f} | {r['read_0_workers']:,.0f} | "
                     f"{r['read_2_workers']:,.0f} | {r['read_2_workers'] / base:.2f}x | {r['resume']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    everything = [run(args.samples, s) for s in args.seconds]
    for r in everything:
        print(table(r), "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
