"""How much unlabelled audio of a new speaker enrollment (:mod:`binder.enrollment`) needs, with
each alignment (``mean``, ``coral``), and what it costs when the enrollment clips are one-sided.

Input: a finished leave-one-speaker-out run (``binder train experiment=leave_one_speaker_out_unseen
hydra.run.dir=RUN``); each speaker fold's final model is scored on takes 0-24 of its held-out
speaker (250 recordings), emergent audio->text top-1, the baseline being the same model without
enrollment on the same clips. The reference is the fold's training recordings (the other four
speakers). The speaker is enrolled on clips drawn from their other takes (25-49), whose labels
are not used:

* ``n`` clips drawn at random (any digits; 20 draws each, mean and min reported);
* ``one digit``: 25 clips all of one digit (the draw a careless user might make; mean over digits).

    python benchmarks/enrollment.py RUN [--json benchmarks/enrollment.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

SIZES = (2, 5, 10, 20, 50, 100, 250)
DRAWS = 20


def fold_embeddings(model_dir: Path, fsdd: Path, speaker: str) -> Dict[str, Any]:
    """The held-out speaker's embeddings, digits and takes, the reference (the other speakers'
    embeddings) and the class prompts' embeddings."""
    from binder.recipes.speakers import fsdd_embeddings

    e = fsdd_embeddings(model_dir, fsdd)
    mine = torch.tensor([name == speaker for name in e["speaker"]])
    return {"z": e["z"][mine], "reference": e["z"][~mine], "digit": e["digit"][mine], "take": e["take"][mine],
            "classes": e["classes"]}


def top1(e: Dict[str, Any], enrol: "torch.Tensor | None", align: str = "mean") -> float:
    """Top-1 on takes 0-24, enrolled on the clips ``enrol`` (a boolean mask) or not at all."""
    from binder.enrollment import from_embeddings

    test = e["take"] < 25
    z = e["z"][test]
    if enrol is not None:
        z = from_embeddings("audio", e["z"][enrol], "benchmark", e["reference"], align=align)(z)
    return 100.0 * float(((z @ e["classes"].T).argmax(1) == e["digit"][test]).float().mean())


def measure(e: Dict[str, Any], align: str, rng: np.random.Generator) -> Dict[str, Any]:
    pool = np.flatnonzero((e["take"] >= 25).numpy())
    row: Dict[str, Any] = {"none": top1(e, None)}
    for n in SIZES:
        scores = []
        for _ in range(DRAWS if n < len(pool) else 1):
            mask = torch.zeros(len(e["take"]), dtype=torch.bool)
            mask[rng.choice(pool, size=n, replace=False)] = True
            scores.append(top1(e, mask, align))
        row[str(n)] = {"mean": float(np.mean(scores)), "min": float(np.min(scores))}
    one = [top1(e, (e["take"] >= 25) & (e["digit"] == d), align) for d in range(10)]
    row["one digit"] = {"mean": float(np.mean(one)), "min": float(np.min(one))}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished leave-one-speaker-out run folder")
    p.add_argument("--fsdd", type=Path, default=None, help="FSDD's folder (default: $BINDER_DATA/fsdd)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    from binder.datasets.paths import data_root

    fsdd = args.fsdd or data_root(None) / "fsdd"
    embedded = {}
    for metrics_file in sorted(args.run.glob("*/metrics.json")):
        speaker = metrics_file.parent.name
        if speaker != "takes":
            model_dir = Path(json.loads(metrics_file.read_text())["model_dir"])
            embedded[speaker] = fold_embeddings(model_dir, fsdd, speaker)
    keys = ["none", *map(str, SIZES), "one digit"]
    out: Dict[str, Any] = {"draws": DRAWS}
    for align in ("mean", "coral"):
        rng = np.random.default_rng(0)
        rows = {speaker: measure(e, align, rng) for speaker, e in embedded.items()}
        mean = {k: float(np.mean([r[k] if k == "none" else r[k]["mean"] for r in rows.values()])) for k in keys}
        print(f"\nalign={align}: top-1 on takes 0-24 by enrollment clips (mean of draws, min in brackets)")
        print("held out | " + " | ".join(keys))
        for speaker, r in rows.items():
            cells = [f"{r[k]:.1f}" if k == "none" else f"{r[k]['mean']:.1f} ({r[k]['min']:.1f})" for k in keys]
            print(f"{speaker} | " + " | ".join(cells))
        print("mean | " + " | ".join(f"{mean[k]:.1f}" for k in keys), flush=True)
        out[align] = {"folds": rows, "mean": mean}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
