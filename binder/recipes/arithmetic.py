"""The arithmetic benchmark: image + audio -> image retrieval, measured (binder's addition to
ImageBind, arXiv 2305.05665, whose sec. 4.3 shows embedding arithmetic only as pictures).

The gallery holds composites of two held-out MNIST digits side by side (28 x 56; every unordered
pair of distinct digits, ``per_pair`` of each, never one instance twice;
:mod:`binder.datasets.composites`). A query is "an image of digit a (a held-out single) + the
spoken digit b (a held-out FSDD take)", a != b; a hit is a composite that holds both a and b.
For the composed query (:meth:`binder.BindModel.compose` with the model's calibration), the
image-only and the audio-only query it reports precision@k (the share of the top k that are hits)
and R@k (the share of queries with at least one hit in the top k), with chance, plus which digit
the top k carry; then sweeps the audio weight from 0 to 1, calibrated and uncalibrated (ImageBind's
plain sum). Writes ``arithmetic.md``, ``arithmetic.json`` and ``arithmetic.png`` to the run
folder (and to ``arithmetic.out`` when set). ``binder train experiment=arithmetic`` trains the
audio encoder first (as the quick start does); ``arithmetic.model=<folder>`` evaluates a saved one.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from binder.arithmetic import compose_embeddings
from binder.config import SCHEMAS, build_dataclass, to_dict
from binder.datasets.composites import composite_gallery, side_by_side
from binder.datasets.digits import DigitsConfig, DigitsWorld
from binder.errors import BinderConfigError
from binder.evaluation.results import make_record, write_metrics
from binder.files import atomic_savefig, atomic_write
from binder.types import IMAGE

log = logging.getLogger(__name__)

AUDIO = "audio"


@dataclass
class ArithmeticConfig:
    """The ``arithmetic`` node of ``experiment=arithmetic``."""

    model: Optional[str] = None  # a saved model with audio; None: train one first (the run's own config)
    per_pair: int = 20  # gallery composites per unordered pair of distinct digits (45 pairs)
    queries_per_pair: int = 5  # queries per ordered pair (a, b), a != b (90 pairs)
    query_from: int = 9500  # held-out MNIST instances from here on are query images; below it, gallery
    k: int = 10
    seed: int = 0
    weights: Optional[List[float]] = None  # [image, audio] contributions of the composed query; None: equal
    sweep: List[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])  # audio weights
    out: Optional[str] = None  # also write the three files here (e.g. benchmarks/arithmetic)


SCHEMAS.register("arithmetic/default", ArithmeticConfig)


@dataclass
class Queries:
    """The benchmark's queries: image digit ``a`` (MNIST index), audio digit ``b`` (a recording)."""

    a: np.ndarray
    b: np.ndarray
    images: List[int]
    recordings: List[Any]


def make_queries(world: DigitsWorld, cfg: ArithmeticConfig, rng: np.random.Generator) -> Queries:
    """``queries_per_pair`` queries for each ordered pair a != b, from held-out singles at or
    after ``query_from`` and held-out recordings."""
    held = world.image_indices("test")
    pool = held[held >= cfg.query_from]
    recs = world.recordings_of("test")
    by_digit = {d: [r for r in recs if r.digit == d] for d in range(10)}
    a, b, images, recordings = [], [], [], []
    for da in range(10):
        singles = pool[world.labels[pool] == da]
        for db in range(10):
            if da == db:
                continue
            if not len(singles) or not by_digit[db]:
                raise BinderConfigError(f"no held-out image of {da} or recording of {db} for the queries")
            for _ in range(cfg.queries_per_pair):
                a.append(da)
                b.append(db)
                images.append(int(rng.choice(singles)))
                recordings.append(by_digit[db][int(rng.integers(len(by_digit[db])))])
    return Queries(np.array(a), np.array(b), images, recordings)


def make_gallery(world: DigitsWorld, cfg: ArithmeticConfig) -> Tuple[List[Image.Image], np.ndarray]:
    """Composite images and their (G, 10) multi-hot digits, from held-out instances before ``query_from``."""
    held = world.image_indices("test")
    pool = held[held < cfg.query_from]
    pairs = composite_gallery(world.labels, pool, cfg.per_pair, cfg.seed)
    images = [Image.fromarray(side_by_side(world.images[i], world.images[j]), mode="L") for i, j in pairs]
    digits = np.zeros((len(pairs), 10), dtype=bool)
    for row, (i, j) in enumerate(pairs):
        digits[row, [world.labels[i], world.labels[j]]] = True
    return images, digits


def retrieval_metrics(scores: torch.Tensor, holds: np.ndarray, a: np.ndarray, b: np.ndarray,
                      k: int) -> Dict[str, float]:
    """Precision@k, R@k (queries with >= 1 hit in the top k) and the share of the top k holding
    a and holding b, for scores (Q, G) over a gallery whose digits are ``holds`` (G, 10)."""
    top = scores.topk(k, dim=1).indices.numpy()  # (Q, k)
    has_a = holds[top, a[:, None]]  # (Q, k)
    has_b = holds[top, b[:, None]]
    hit = has_a & has_b
    return {"precision": float(hit.mean()), "recall": float(hit.any(1).mean()),
            "holds_image_digit": float(has_a.mean()), "holds_audio_digit": float(has_b.mean())}


def chance(holds: np.ndarray, k: int) -> Dict[str, float]:
    """Chance precision@k and R@k for a random ranking (hits per query: one pair's composites)."""
    g = holds.shape[0]
    relevant = int((holds[:, 0] & holds[:, 1]).sum())  # every pair has the same count
    miss = math.comb(g - relevant, k) / math.comb(g, k) if g - relevant >= k else 0.0
    return {"precision": relevant / g, "recall": 1.0 - miss}


@torch.no_grad()
def evaluate(model: Any, world: DigitsWorld, cfg: ArithmeticConfig) -> Dict[str, Any]:
    """Embed the gallery and the queries once, then score every query variant and the sweep."""
    rng = np.random.default_rng(cfg.seed)
    images, holds = make_gallery(world, cfg)
    queries = make_queries(world, cfg, rng)
    log.info("arithmetic: %d composites, %d queries (image a + audio b)", len(images), len(queries.a))
    gallery = model.embed(image=images, batch_size=128)[IMAGE]
    z = model.embed(image=[world.pil(i) for i in queries.images], batch_size=128, progress=False)[IMAGE]
    za = model.embed(audio=[r.path for r in queries.recordings], batch_size=64, progress=False)[AUDIO]
    spreads = dict(model.query_spreads)
    weights = cfg.weights or [0.5, 0.5]

    def run(w: List[float], calibrated: bool) -> Dict[str, float]:
        q = compose_embeddings({IMAGE: z, AUDIO: za}, w, spreads if calibrated else None)
        return retrieval_metrics(q @ gallery.T, holds, queries.a, queries.b, cfg.k)

    rows = {"image + audio (composed)": run(weights, True),
            "image only": retrieval_metrics(z @ gallery.T, holds, queries.a, queries.b, cfg.k),
            "audio only": retrieval_metrics(za @ gallery.T, holds, queries.a, queries.b, cfg.k),
            "image + audio (uncalibrated)": run(weights, False)}
    sweep = {"audio_weight": list(cfg.sweep),
             "calibrated": [run([1 - w, w], True) for w in cfg.sweep],
             "uncalibrated": [run([1 - w, w], False) for w in cfg.sweep]}
    best_single = max(rows["image only"]["precision"], rows["audio only"]["precision"])
    composed = rows["image + audio (composed)"]["precision"]
    return {"k": cfg.k, "gallery": len(images), "queries": len(queries.a), "weights": weights,
            "query_spreads": spreads, "chance": chance(holds, cfg.k), "rows": rows, "sweep": sweep,
            "ratio_to_best_single": composed / best_single if best_single else float("inf"),
            "goal_met": bool(composed >= 0.6 and composed >= 2 * best_single)}


def format_report(result: Dict[str, Any]) -> str:
    """The markdown table of :func:`evaluate`'s result."""
    k = result["k"]
    lines = [f"Image + audio -> image retrieval on the digits world: {result['gallery']} composites, "
             f"{result['queries']} queries, k = {k}", "",
             f"| query | precision@{k} | R@{k} | top {k} holding the image's digit "
             f"| top {k} holding the audio's digit |",
             "|---|---:|---:|---:|---:|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['holds_image_digit']:.2f} | "
                     f"{r['holds_audio_digit']:.2f} |")
    c = result["chance"]
    lines.append(f"| chance | {c['precision']:.3f} | {c['recall']:.3f} | 0.20 | 0.20 |")
    lines += ["", f"Composed weights (image, audio contributions): {result['weights']}; calibration spreads: "
              + ", ".join(f"{m} {s:.3f}" for m, s in result["query_spreads"].items()),
              f"Composed / best single-modality precision: {result['ratio_to_best_single']:.1f}x; "
              f"goal (>= 0.6 and >= 2x): {'met' if result['goal_met'] else 'NOT met'}"]
    return "\n".join(lines)


def plot_sweep(result: Dict[str, Any], path: Path) -> None:
    """The weight sweep: precision@k and the share of hits holding each query digit, against the
    audio weight, calibrated and uncalibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep, k = result["sweep"], result["k"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, mode in zip(axes, ("calibrated", "uncalibrated")):
        rows = sweep[mode]
        for key, label, style in (("precision", f"precision@{k} (holds both)", "-o"),
                                  ("holds_image_digit", "holds the image's digit", "--"),
                                  ("holds_audio_digit", "holds the audio's digit", ":")):
            ax.plot(sweep["audio_weight"], [r[key] for r in rows], style, label=label)
        ax.set_title(f"{mode} weights")
        ax.set_xlabel("audio weight (image weight = 1 - audio)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"share of the top {k}")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


def to_record(result: Dict[str, Any]) -> Dict[str, Any]:
    """The result as a CLIP_benchmark record (binder eval's schema): composed-query retrieval
    metrics under ``metrics``, the full result under ``binder.details``."""
    k, rows = result["k"], result["rows"]
    metrics = {}
    for name, key in (("image + audio (composed)", "composed"), ("image only", "image_only"),
                      ("audio only", "audio_only"), ("image + audio (uncalibrated)", "uncalibrated")):
        metrics[f"{key}_image_retrieval_precision@{k}"] = 100 * rows[name]["precision"]
        metrics[f"{key}_image_retrieval_recall@{k}"] = 100 * rows[name]["recall"]
    return make_record("digits-arithmetic", str(result.get("model", "")), str(result.get("model", "")),
                       "composed_retrieval", metrics, classnames=[str(d) for d in range(10)], split="test",
                       modality="image+audio", n=result["queries"], skipped=[], details=result,
                       protocol={"name": "digits-arithmetic", "version": "1", "source": __name__})


def unwrap(result: Dict[str, Any]) -> Dict[str, Any]:
    """The benchmark's own result from a record (or a result written before records)."""
    return result["binder"]["details"] if "binder" in result else result


def write_report(result: Dict[str, Any], folder: Path) -> None:
    """``arithmetic.md``, ``arithmetic.json`` (a CLIP_benchmark record) and ``arithmetic.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "arithmetic.md", format_report(result) + "\n")
    write_metrics(folder / "arithmetic.json", to_record(result))
    plot_sweep(result, folder / "arithmetic.png")


def run(cfg: DictConfig) -> Dict[str, Any]:
    """``task`` of ``experiment=arithmetic``: train (or load) an audio model, then the benchmark."""
    from binder.io import load
    from binder.training import bind

    acfg = build_dataclass(ArithmeticConfig, to_dict(cfg.arithmetic), "arithmetic")
    run_dir = Path(cfg.run_dir).resolve()
    model_dir = acfg.model or bind(cfg)["model_dir"]
    model = load(model_dir)
    if AUDIO not in model.bound_modalities:
        raise BinderConfigError(f"arithmetic.model {model_dir!r} has no audio encoder; it embeds {model.modalities}")
    if not {IMAGE, AUDIO} <= set(model.query_spreads):  # a model saved before calibration existed
        calibrate_digits(model, cfg)
    world = DigitsWorld(build_dataclass(DigitsConfig, to_dict(cfg.data), "data"))
    result = evaluate(model, world, acfg)
    result["model"] = str(model_dir)
    log.info("\n%s", format_report(result))
    write_report(result, run_dir)
    if acfg.out:
        write_report(result, Path(acfg.out))
    return result


def calibrate_digits(model: Any, cfg: DictConfig) -> None:
    """Calibrate a model that has no saved spreads on the digits world's held-out audio pairs
    (what training does at its end)."""
    from binder.arithmetic import calibrate_from_datamodule
    from binder.training.data import build_datamodule

    log.info("the model has no saved query calibration: measuring it on the held-out digits")
    datamodule = build_datamodule(cfg.data, model, [AUDIO], "image")
    datamodule.setup("fit")
    calibrate_from_datamodule(model, datamodule)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m binder.recipes.arithmetic RESULT.json``: redraw ``arithmetic.png`` beside a saved
    result (the committed benchmark keeps its JSON and table only)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("result", type=Path, help="an arithmetic.json")
    path = parser.parse_args(argv).result
    plot_sweep(unwrap(json.loads(path.read_text())), path.with_suffix(".png"))
    log.info("wrote %s", path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
