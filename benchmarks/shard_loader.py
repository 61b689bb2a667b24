"""Data pipeline: the samples/s the shard loader sustains against the training step's rate.

Packs ``--samples`` synthetic pairs shaped like AudioSet's (``--seconds`` of 44.1 kHz WAV, the
anchor's cached ViT-H-14 embedding of 1,024 values) with ``binder shards pack``'s code, then
reads them through binder's shard reader (:mod:`binder.datasets.shards`: litdata's loader, the
audio preprocessor in the workers) with ``--workers`` processes, in two modes:

* ``loader``: log-mel features computed in the workers (``speed.audio_features=loader``);
* ``raw``: workers decode and cut raw clips, features are computed batched on the device
  (``speed.audio_features=device``; included in the timing).

It then times the training step at the same batch (ImageBind's audio encoder, bf16 on a GPU;
:mod:`train_step`) in the same process: the loader keeps the GPU fed when its rate is above the
step's. GPU machine (16 cores, batch 512)::

    python benchmarks/shard_loader.py --device cuda --batch 512 --workers 15 --samples 8192

CPU (2 cores; the tiny preset)::

    python benchmarks/shard_loader.py --device cpu --batch 64 --workers 2 --samples 512 --preset tiny
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_pairs(folder: Path, n: int, seconds: float, dim: int) -> Path:
    """A manifest of ``n`` pairs (64 distinct WAV files and images, reused) and an anchor cache."""
    import soundfile as sf
    from PIL import Image

    from binder.parts import PartJob
    from binder.training.cache import CacheConfig, _merge

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        wav, png = folder / f"a{i % 64}.wav", folder / f"i{i}.png"
        if i < 64:
            sf.write(wav, rng.normal(0, 0.1, int(44100 * seconds)).astype(np.float32), 44100)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
        rows.append({"id": f"s{i}", "image": str(png), "audio": str(wav)})
    with open(folder / "pairs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "image", "audio"])
        writer.writeheader()
        writer.writerows(rows)
    keys = [r["image"] for r in rows]
    vectors = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1).numpy().astype(np.float16)
    job = PartJob(folder / ".cache.parts", n, n, {}).start()
    buf = io.BytesIO()
    np.savez(buf, positions=np.arange(n), vectors=vectors, skipped=np.asarray([], dtype=str))
    job.write(0, buf.getvalue())
    _merge(folder / "cache", job, keys, CacheConfig(), {"anchor": "synthetic", "data": "synthetic"})
    return folder / "pairs.csv"


def loader_rate(shards: Path, model: Any, batch: int, workers: int, raw: bool, device: str) -> float:
    from litdata import StreamingDataLoader

    from binder.datasets.shards import Decoder, collate_shards, shard_dataset

    pre = model.preprocessors["audio"]
    decode = Decoder("audio", pre, model.anchor, True, None, raw, {})
    loader = StreamingDataLoader(shard_dataset(str(shards), decode, {}, shuffle=True, drop_last=True),
                                 batch_size=batch, num_workers=workers, collate_fn=collate_shards,
                                 pin_memory=device == "cuda")
    seen, start = 0, None
    for i, b in enumerate(loader):
        x = b["audio"]
        if raw:
            x = pre.features({k: v.to(device, non_blocking=True) for k, v in x.items()})
        else:
            x = x.to(device, non_blocking=True)
        if i == 0:
            start = time.perf_counter()  # after the workers' start-up
            continue
        seen += x.shape[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def main() -> None:
    from binder import BindModel
    from binder.anchor import OpenClipAnchor
    from binder.datasets.shards import pack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="imagebind")
    parser.add_argument("--anchor", default="ViT-H-14", help="for the step time only (random weights)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="shard-loader-"))
    manifest = make_pairs(folder, args.samples, args.seconds, 1024)
    pack(manifest, folder / "shards", "audio", cache=folder / "cache", workers=2)
    model = BindModel(OpenClipAnchor(model="binder-digits"), {"audio": {"preset": args.preset}})
    rows: Dict[str, float] = {}
    for raw in (False, True):
        rows[f"shards -> {'raw clips, features on the device' if raw else 'features in the workers'}"] = \
            loader_rate(folder / "shards", model, args.batch, args.workers, raw, args.device)
    import train_step

    module = train_step.build(args.preset, args.anchor, args.device, False)
    precision = "bf16" if args.device == "cuda" else "fp32"
    step = train_step.run(module, args.batch, True, precision, args.device, 10, 3)["samples_per_s"]
    print(f"{args.device}: {args.samples} pairs of {args.seconds:g} s 44.1 kHz audio + cached embedding, batch "
          f"{args.batch}, {args.workers} workers; training step ({args.preset}, cached targets, {precision}): "
          f"{step:,.0f} samples/s")
    print("| loader | samples/s | loader / step |")
    print("| --- | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r:,.0f} | {r / step:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "loader": rows, "step": step}, indent=2))


if __name__ == "__main__":
    main()
