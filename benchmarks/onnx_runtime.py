"""ONNX and int8 against eager PyTorch on this CPU: size, latency at batch 1, throughput at batch
32, parity, and the zero-shot change on the digits world.

For a model (``--model``: a trained digits-world model folder, e.g. the quick start's
``outputs/.../model``; or ``--layout imagebind_huge``: ImageBind's sizes, ViT-H-14 anchor and the
``imagebind`` presets, random weights), every graph is exported twice (float32 and
``--quantize int8``) and each of its modalities timed in the same process, interleaved, with
PyTorch and onnxruntime given the same number of threads (``--threads``): milliseconds per
preprocessed input at batch 1, inputs/s at batch 32, file size, and the cosine of each runtime's
embeddings with PyTorch's. On a digits model, emergent audio->text zero-shot top-1 on FSDD's
held-out takes (0-4, 250 recordings) for all three. Writes ``benchmarks/onnx_runtime-<name>.json``.

    python benchmarks/onnx_runtime.py --model outputs/.../model
    python benchmarks/onnx_runtime.py --layout imagebind_huge --modalities audio,depth --batch 8
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
import torch
import torch.nn.functional as F


def best_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def folder_mb(folder: Path, modality: str) -> float:
    return sum(p.stat().st_size for p in folder.glob(f"{modality}.onnx*")) / 2 ** 20


def time_modality(model: Any, runtimes: Dict[str, Any], folders: Dict[str, Path], modality: str, batch: int,
                  repeat: int) -> Dict[str, Any]:
    """Batch-1 latency, batch-``batch`` throughput, size and parity of each runtime for ``modality``."""
    from binder.onnx.export import example_batch

    x, _ = example_batch(model, modality)
    one = x[:1]
    many = x[torch.arange(batch) % len(x)]
    with torch.no_grad():
        ref = model.encode(modality, many)
    row: Dict[str, Any] = {"modality": modality, "batch": batch}
    parts = [model.anchor] if modality in ("image", "text") else [model.encoders[modality], model.heads[modality]]
    torch_mb = sum(p.numel() * p.element_size() for part in parts for p in part.parameters()) / 2 ** 20
    for name, rt in runtimes.items():
        with torch.no_grad():
            lat = best_time(lambda: rt.encode(modality, one), repeat)
            thr = best_time(lambda: rt.encode(modality, many), max(1, repeat // 3))
            z = rt.encode(modality, many)
        row[name] = {"batch1_ms": 1e3 * lat, "throughput": batch / thr,
                     "min_cosine": float(F.cosine_similarity(z.float(), ref).min()),
                     "size_mb": torch_mb if name == "pytorch" else folder_mb(folders[name], modality)}
    base = row["pytorch"]
    for name in runtimes:
        r = row[name]
        print(f"{modality:<6} {name:<8} {r['size_mb']:8.1f} MB  batch 1 {r['batch1_ms']:8.2f} ms "
              f"(x{base['batch1_ms'] / r['batch1_ms']:.2f})  batch {batch} {r['throughput']:8.1f}/s "
              f"(x{r['throughput'] / base['throughput']:.2f})  cosine {r['min_cosine']:.6f}", flush=True)
    return row


def digits_zero_shot(runtimes: Dict[str, Any], data: Path) -> Dict[str, float]:
    """Emergent audio->text top-1 on FSDD takes 0-4 with the digits world's prompts."""
    from binder.datasets.digits import CLASSNAMES, TEMPLATES
    from binder.evaluation.run import zero_shot

    files = sorted(p for p in (data / "fsdd" / "recordings").glob("*.wav") if int(p.stem.split("_")[2]) < 5)
    labels = np.array([int(p.stem.split("_")[0]) for p in files])
    out = {}
    for name, rt in runtimes.items():
        out[name] = zero_shot(rt, "audio", [str(p) for p in files], labels, CLASSNAMES, TEMPLATES)["top1"]
        print(f"audio->text zero-shot top-1 ({len(files)} held-out takes), {name}: {out[name]:.1f}%", flush=True)
    return out


def imagebind_layout(modalities: List[str]) -> Any:
    import binder

    return binder.create_model("bind", anchor="ViT-H-14", modalities={m: {"preset": "imagebind"} for m in modalities})


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved model folder (a digits-world model gets the zero-shot figures)")
    parser.add_argument("--layout", choices=["imagebind_huge"], help="ImageBind's sizes with random weights")
    parser.add_argument("--modalities", default="audio", help="bound modalities of --layout")
    parser.add_argument("--only", default="", help="time only these modalities (default: all)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="write the exports here instead of a temporary folder")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import binder
    from binder.onnx.export import export_onnx

    torch.set_num_threads(args.threads)
    os.environ["BINDER_ONNX_THREADS"] = str(args.threads)
    model = imagebind_layout(args.modalities.split(",")) if args.layout else binder.load(args.model)
    model.eval()
    name = args.layout or Path(args.model).resolve().parent.name
    work = Path(args.keep or tempfile.mkdtemp(prefix="binder-onnx-"))
    result: Dict[str, Any] = {"model": name, "threads": args.threads, "rows": []}
    try:
        folders = {}
        for label, quantize in (("onnx", None), ("int8", "int8")):
            start = time.perf_counter()
            folders[label] = export_onnx(model, work / label, quantize=quantize,
                                         only=args.only.split(",") if args.only else None)
            result[f"export_{label}_s"] = time.perf_counter() - start
            print(f"exported {label} in {result[f'export_{label}_s']:.0f} s", file=sys.stderr, flush=True)
        runtimes = {"pytorch": model, **{k: binder.load(v, runtime="onnx") for k, v in folders.items()}}
        for modality in (args.only.split(",") if args.only else model.modalities):
            result["rows"].append(time_modality(model, runtimes, folders, modality, args.batch, args.repeat))
        data = Path(os.environ.get("BINDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
        if not args.layout and "audio" in model.modalities and (data / "fsdd").is_dir():
            result["zero_shot_top1"] = digits_zero_shot(runtimes, data)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or str(Path(__file__).with_name(f"onnx_runtime-{name}.json"))
    Path(out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
