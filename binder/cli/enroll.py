"""``binder enroll``: a source's correction (:mod:`binder.enrollment`) from unlabelled files of it.

    binder enroll --model M --modality audio george/ -o george.enrollment.safetensors
    binder enroll --model M --modality audio george/ --reference train/ --align coral -o george.safetensors
    binder search clips.idx --model M --audio q.wav --enrollment george.enrollment.safetensors

The files (files, folders or a manifest, as ``binder index build`` takes them) are all samples of
one source, e.g. one speaker's recordings; ``--reference`` adds back the mean of other sources'
files (and, with ``--align coral``, gives the covariance to align to). The output is written
atomically; a file that exists is kept unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict


def enroll_command(args: argparse.Namespace) -> int:
    from binder.enrollment import enroll
    from binder.errors import BinderInputError
    from binder.index.items import gather
    from binder.io import load

    out = Path(args.output).expanduser()
    if out.exists() and not args.overwrite:
        raise BinderInputError(f"output {str(out)!r} exists: choose a new file or pass --overwrite")
    samples = [it.path for it in gather(args.items, args.modality)]  # a bad path fails before the model loads
    reference = [it.path for it in gather(args.reference, args.modality)] if args.reference else None
    enrollment = enroll(load(args.model), reference=reference, align=args.align, shrinkage=args.shrinkage,
                        batch_size=args.batch_size, **{args.modality: samples})
    enrollment.save(out)
    ref = f", reference {enrollment.reference_n}" if enrollment.reference_n else ""
    print(f"enrolled {enrollment.modality} from {enrollment.n} file(s) ({enrollment.align}{ref}) -> {out}")
    return 0


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    cmd = sub.add_parser("enroll", help="adapt a model's embeddings to one source (a speaker) from unlabelled files",
                         description="Embed unlabelled files of one source (e.g. one speaker) and save the "
                                     "correction that removes their shared shift; use it with binder search "
                                     "--enrollment.")
    cmd.add_argument("items", nargs="+", help="files, folders or a manifest of the one source")
    cmd.add_argument("--model", required=True)
    cmd.add_argument("--modality", required=True)
    cmd.add_argument("--reference", nargs="+",
                     help="files of the sources the model was trained on (optional with --align mean)")
    cmd.add_argument("--align", default="mean", choices=["mean", "coral"],
                     help="mean: remove the source's mean embedding (default); coral: align its covariance to the "
                          "reference's too")
    cmd.add_argument("--shrinkage", type=float, default=0.5, help="coral's covariance shrinkage, in (0, 1] (0.5)")
    cmd.add_argument("-o", "--output", required=True, help="the enrollment file to write (.safetensors)")
    cmd.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    cmd.add_argument("--batch-size", type=int, default=32, help="items per forward pass (default 32)")
    return {"enroll": enroll_command}
