"""Speed of ``binder eval`` (:func:`binder.evaluate`): items/s on an ESC-50-size fixture on this
machine's CPU, with 0 and 2 DataLoader workers, and the second run's speed-up from the embedding
cache (the issue's target: >= 10x).

Two shapes of data, each 2,000 clips in ESC-50's exact layout (``meta/esc50.csv`` + ``audio/``,
50 classes, 5 folds), written once into ``--fixture`` (default a folder under /tmp):

* ``esc50``: 5 s, 44.1 kHz mono 16-bit WAV, as ESC-50 ships (resampling to 16 kHz dominates);
* ``short``: 1 s, 16 kHz (spectrograms and the encoder dominate).

The model is the audio encoder binder trains by default (``preset=tiny``) on the digits anchor's
architecture, with random weights (speed does not depend on them): ``--model`` evaluates a saved
model instead. Each setting runs with a fresh cache (a miss), then once more with other prompts
(a hit); the baseline is the cold run with 0 workers, measured in the same process.

    python benchmarks/eval_speed.py [--clips 2000] [--json benchmarks/eval_speed.json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import soundfile as sf

SHAPES = {"esc50": (5.0, 44100), "short": (1.0, 16000)}


def write_fixture(root: Path, clips: int, seconds: float, rate: int) -> Path:
    """``clips`` recordings in ESC-50's layout (written once; reused when complete)."""
    meta = root / "meta" / "esc50.csv"
    if meta.is_file() and len(meta.read_text().splitlines()) == clips + 1:
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(clips):
        target, fold = i % 50, i % 5 + 1
        x = 0.2 * np.sin(2 * np.pi * (100 + 40 * target) * t) + 0.05 * rng.normal(size=t.shape)
        name = f"{fold}-{i}-A-{target}.wav"
        sf.write(root / "audio" / name, x.astype(np.float32), rate, subtype="PCM_16")
        rows.append(f"{name},{fold},{target},class_{target},False,{i},A")
    meta.write_text("\n".join(rows) + "\n")
    return root


def model_of(source: str | None) -> Any:
    import torch

    import binder
    from binder.anchor import OpenClipAnchor

    if source:
        return binder.load(source)
    torch.manual_seed(0)
    return binder.BindModel(OpenClipAnchor(model="binder-digits"), {"audio": {}}).eval()


def measure(model: Any, root: Path, workers: int, cache: Path) -> Dict[str, float]:
    """Cold (cache miss) and warm (hit, other prompts) runs of one setting."""
    import binder

    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    cold = binder.evaluate(model, "esc50", root, templates=["a sound of {}."], workers=workers, batch_size=64,
                           cache_dir=cache, progress=False)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = binder.evaluate(model, "esc50", root, templates=["the {} noise.", "a recording of {}."], workers=workers,
                           batch_size=64, cache_dir=cache, progress=False)
    warm_s = time.perf_counter() - start
    assert cold.record["binder"]["embedding_cache"] == "miss" and warm.record["binder"]["embedding_cache"] == "hit"
    n = cold.record["binder"]["n"]
    return {"items": n, "cold_s": round(cold_s, 2), "cold_items_per_s": round(n / cold_s, 1),
            "warm_s": round(warm_s, 3), "warm_items_per_s": round(n / warm_s, 1),
            "cache_speedup": round(cold_s / warm_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--model", default=None, help="a saved model (default: random tiny audio encoder)")
    parser.add_argument("--fixture", default=str(Path(tempfile.gettempdir()) / "binder-eval-speed"))
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    import torch

    model = model_of(args.model)
    results: Dict[str, Any] = {"clips": args.clips, "threads": torch.get_num_threads(), "shapes": {}}
    for shape, (seconds, rate) in SHAPES.items():
        root = write_fixture(Path(args.fixture) / shape, args.clips, seconds, rate)
        rows = {f"workers={w}": measure(model, root, w, Path(args.fixture) / f"cache-{shape}-{w}") for w in (0, 2)}
        base = rows["workers=0"]["cold_items_per_s"]
        for r in rows.values():
            r["vs_workers0"] = round(r["cold_items_per_s"] / base, 2)
        results["shapes"][shape] = {"seconds": seconds, "rate": rate, **rows}
        for name, r in rows.items():
            print(f"{shape:<6} {name:<10} cold {r['cold_items_per_s']:>7.1f} items/s ({r['cold_s']:.1f} s, "
                  f"{r['vs_workers0']:.2f}x workers=0) | cached {r['warm_items_per_s']:>8.1f} items/s "
                  f"({r['warm_s']:.2f} s) | cache speed-up {r['cache_speedup']:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
