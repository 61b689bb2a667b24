"""Audio embedding throughput at ImageBind's size: recordings/s, model alone and end to end.

ImageBind's audio encoder (the ``imagebind`` preset, random weights), 3 clips of 128 x 204 per
recording, batch 256 (``--batch``):

* ``model``: preprocessed clips already on the device, ``BindModel.encode`` under each
  ``--precision`` (fp32 is the baseline of the ratio column);
* ``embed``: binder's one embedding loop (:func:`binder.embedding.embed_inputs`, what ``binder
  embed`` runs) from WAV files, with ``--workers`` decoding processes, under the fastest precision.

GPU (the issue's figure; targets >= 3,700 recordings/s)::

    python benchmarks/embed_throughput.py --device cuda --batch 256 --precision fp32 fp16 bf16 --files 8192 --workers 15

CPU (the loop works; figures of the 2-core machine, tiny preset)::

    python benchmarks/embed_throughput.py --device cpu --preset tiny --batch 64 --precision fp32 --files 256 --workers 0
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def model_rate(model: Any, batch: int, clips: int, precision: str, device: str, steps: int) -> float:
    cfg = model.configs["audio"]
    x = torch.randn(batch, clips, 1, cfg.num_mel_bins, cfg.target_length, device=device)
    dtype = DTYPES[precision]
    amp = torch.autocast(device, dtype=dtype) if dtype is not None else torch.autocast(device, enabled=False)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad(), amp:
        for _ in range(3):
            model.encode("audio", x)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            model.encode("audio", x)
        sync()
    return batch * steps / (time.perf_counter() - start)


def files_rate(model: Any, n: int, batch: int, workers: int, precision: str, seconds: float) -> float:
    import soundfile as sf

    from binder.embedding import embed_inputs

    folder = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(min(n, 64)):  # 64 distinct files, listed n times over
        path = folder / f"{i}.wav"
        sf.write(path, rng.normal(0, 0.1, int(44100 * seconds)).astype(np.float32), 44100)
        paths.append(str(path))
    inputs = [paths[i % len(paths)] for i in range(n)]
    embed_inputs(model, "audio", inputs[:batch], batch_size=batch, num_workers=0, progress=False)  # warm-up
    start = time.perf_counter()
    done = embed_inputs(model, "audio", inputs, batch_size=batch, num_workers=workers, progress=False,
                        autocast=DTYPES[precision] if model.device.type == "cuda" else None)
    assert len(done.kept) == n
    return n / (time.perf_counter() - start)


def main() -> None:
    from binder import BindModel
    from binder.anchor import OpenClipAnchor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="imagebind")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32", "fp16", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--files", type=int, default=2048, help="recordings for the end-to-end figure (0: skip)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of those recordings (44.1 kHz)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = BindModel(OpenClipAnchor(model="binder-digits"), {"audio": {"preset": args.preset}}).to(args.device).eval()
    rows: Dict[str, float] = {p: model_rate(model, args.batch, args.clips, p, args.device, args.steps)
                              for p in args.precision}
    best = max(rows, key=rows.get)
    print(f"{args.device}: audio preset {args.preset}, {args.clips} clips per recording, batch {args.batch}")
    print("| what | recordings/s | vs the first |")
    print("| --- | ---: | ---: |")
    for p, r in rows.items():
        print(f"| model, {p} | {r:,.0f} | {r / rows[args.precision[0]]:.2f}x |")
    if args.files:
        rows[f"embed_inputs, {best}, {args.workers} workers"] = r = files_rate(
            model, args.files, args.batch, args.workers, best, args.seconds)
        print(f"| embed_inputs from {args.seconds:g} s 44.1 kHz WAV files, {best}, {args.workers} workers | {r:,.0f} | "
              f"{r / rows[args.precision[0]]:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "recordings_per_s": rows}, indent=2))


if __name__ == "__main__":
    main()
