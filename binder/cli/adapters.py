"""``binder merge-adapters``: fold LoRA adapters into their base model and save a plain model.

    binder merge-adapters --model BASE --adapters RUN/adapters -o merged/ [--overwrite]

The base is anything :func:`binder.load` takes (the model the adapters were trained from: a
folder, ``imagebind_huge``, ...); the adapters are refused unless they were trained on it. Before
anything is written, each adapted modality's example input is embedded by the adapted pair and by
the merged model, and the merge is refused unless they agree (cosine >= 0.9999). The folder is
written atomically (:func:`binder.save`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict

MIN_COSINE = 0.9999


def merge_command(args: argparse.Namespace) -> int:
    import torch

    from binder.adapters import adapted_modalities, merge_adapters
    from binder.errors import BinderInputError, ModelLoadError
    from binder.io import load, save
    from binder.registry import get_modality

    out = Path(args.output).expanduser()
    if out.exists() and not args.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise BinderInputError(f"output {str(out)!r} exists: choose a new folder or pass --overwrite")
    model = load(args.model, adapters=args.adapters)
    modalities = adapted_modalities(model)
    with torch.no_grad():
        examples = {m: get_modality(m).example_input for m in modalities}
        inputs = {m: [make()] for m, make in examples.items() if make is not None}
        before = model.embed(progress=False, **inputs) if inputs else {}
        merge_adapters(model)
        after = model.embed(progress=False, **inputs) if inputs else {}
    for m in before:
        cosine = float(torch.nn.functional.cosine_similarity(before[m], after[m]).min())
        if cosine < MIN_COSINE:
            raise ModelLoadError(f"the merged {m} encoder embeds unlike the adapted one (cosine {cosine:.6f} < "
                                 f"{MIN_COSINE}); nothing was written")
        print(f"{m}: merged vs adapted cosine {cosine:.6f}", file=sys.stderr)
    path = save(model, out)
    print(path)
    return 0


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    cmd = sub.add_parser("merge-adapters", help="fold LoRA adapters into their base model and save it",
                         description="Load the base model with its LoRA adapters, merge them into the weights, "
                                     "check the merged model embeds as the adapted pair, and save it.")
    cmd.add_argument("--model", required=True, help="the base model the adapters were trained on (folder or name)")
    cmd.add_argument("--adapters", required=True, help="the adapter folder (a LoRA run's <run>/adapters)")
    cmd.add_argument("-o", "--output", required=True, help="the folder to write the merged model to")
    cmd.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return {"merge-adapters": merge_command}
