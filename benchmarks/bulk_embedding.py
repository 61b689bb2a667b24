"""Bulk embedding throughput (what ``binder index build`` / ``binder embed`` spend their time on):
image files/s and audio files/s with DataLoader workers and without, on this machine.

Three collections: ``mnist`` (2,000 MNIST PNG files, 28 x 28, written to a temporary folder:
decoding costs next to nothing), ``photos`` (1,000 real photos, 1280 x 1024 JPEG: the 44 LLVIP
visible images copied under distinct names, so decoding and resizing dominate) and ``audio`` (the
2,500 FSDD recordings, about 0.5 s at 8 kHz, read, resampled to 16 kHz and turned into
spectrograms). Each setting embeds every file once after a warm-up batch; the ratio is against
``workers=0`` measured in the same run.

    python benchmarks/bulk_embedding.py --model outputs/<run>/model
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from PIL import Image


def files(data: Path, folder: Path) -> Dict[str, List[str]]:
    from binder.datasets.mnist import load_mnist

    images, _ = load_mnist(data / "mnist")
    paths = []
    for i in range(8000, 10000):
        p = folder / f"m{i}.png"
        Image.fromarray(images[i]).save(p)
        paths.append(str(p))
    visible = sorted((data / "llvip-samples" / "visible").glob("*.jpg"))
    photos = []
    for i in range(1000 if visible else 0):
        p = folder / f"photo{i:04d}.jpg"
        shutil.copyfile(visible[i % len(visible)], p)
        photos.append(str(p))
    audio = sorted(str(p) for p in (data / "fsdd" / "recordings").glob("*.wav"))
    return {"mnist": ("image", paths), "photos": ("image", photos), "audio": ("audio", audio)}


def measure(model: Any, modality: str, paths: List[str], workers: int, batch: int) -> Dict[str, float]:
    from binder.index.items import Item, embed_items

    items = [Item(p) for p in paths]
    embed_items(model, modality, items[:batch], batch, workers, show_progress=False)  # warm-up
    start = time.perf_counter()
    report = embed_items(model, modality, items, batch, workers, show_progress=False)
    seconds = time.perf_counter() - start
    assert report.count == len(items), report.skipped[:3]
    return {"workers": workers, "files": len(items), "seconds": seconds, "files_per_s": len(items) / seconds}


def main(argv: List[str] = None) -> int:
    import binder
    from binder.datasets.paths import data_root

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).with_name("bulk_embedding.json")))
    args = parser.parse_args(argv)
    model = binder.load(args.model)
    folder = Path(tempfile.mkdtemp(prefix="binder-bulk-"))
    try:
        inputs = files(data_root(None), folder)
        rows = []
        for name, (modality, paths) in inputs.items():
            if not paths:
                continue
            for w in (int(x) for x in args.workers.split(",")):
                r = {"collection": name, "modality": modality, **measure(model, modality, paths, w, args.batch_size)}
                rows.append(r)
                base = next(x for x in rows if x["collection"] == name and x["workers"] == 0)
                r["vs_no_workers"] = r["files_per_s"] / base["files_per_s"]
                print(f"{name:<6} workers={w}  {r['files']} files in {r['seconds']:6.1f} s  "
                      f"{r['files_per_s']:7.1f} files/s  x{r['vs_no_workers']:.2f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "batch_size": args.batch_size, "rows": rows},
                                         indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
