"""``binder export MODEL --format onnx -o DIR [--quantize int8]``: a model as ONNX graphs
(:mod:`binder.onnx.export`), loadable with ``binder.load(DIR, runtime="onnx")`` and by every
command that takes ``--model``."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict


def export(args: argparse.Namespace) -> int:
    from binder.io import load
    from binder.onnx.export import export_onnx

    model = load(args.model)
    path = export_onnx(model, args.output, quantize=args.quantize, source=str(args.model))
    print(f"exported {', '.join(model.modalities)} to {path} ({args.quantize or 'float32'})")
    return 0


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    cmd = sub.add_parser("export", help="write a model as ONNX graphs for onnxruntime",
                         description="Write every encoder of MODEL (and the anchor's image and text towers) as ONNX "
                                     "graphs with their preprocessing config and file digests; load the folder with "
                                     "binder.load(DIR, runtime='onnx') or pass it as --model.")
    cmd.add_argument("model", help="a model folder, checkpoint or name (anything binder.load takes)")
    cmd.add_argument("--format", choices=["onnx"], default="onnx")
    cmd.add_argument("-o", "--output", required=True, help="the folder to write")
    cmd.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 quantization of the weights")
    return {"export": export}
