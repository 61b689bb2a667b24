"""``binder.evaluate``: one model on one dataset split, with the dataset's protocol.

The steps: build the dataset's adapter (its options checked), check the output paths and prompt
templates before any work, read the split from its official layout, embed its items once per
(model, dataset, split, preprocessing) through the embedding cache (:mod:`binder.evaluation.cache`),
then run the task: zero-shot classification (ImageBind, arXiv 2305.05665, sec. 4.1), zero-shot
retrieval, or few-shot linear probes (sec. 4.2); write the CLIP_benchmark JSON, the per-item
predictions and a chart. The digits world's evaluation (training runs, the five-modality
benchmark) goes through the same function with an in-memory dataset.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from binder.config import SCHEMAS
from binder.errors import BinderInputError
from binder.evaluation.base import RETRIEVAL, Record, Split, build_adapter, digest
from binder.evaluation.cache import Entry, entry_folder, eval_cache_root, files_state, read_entry, write_entry
from binder.evaluation.embedding import embed_records, embed_texts, model_for, preprocessing_of
from binder.evaluation.probe import SEEDS, SHOTS, few_shot
from binder.evaluation.prompts import check_templates, resolve_templates
from binder.evaluation.results import EvalResult, check_writable, make_record, write_json, write_predictions
from binder.evaluation.tasks import classify, retrieve

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """End-of-run evaluation (the schema of the ``eval`` node of training runs)."""

    zero_shot: bool = True  # emergent zero-shot table + metrics.json at the end of the run
    batch_size: int = 64  # inputs per forward pass


SCHEMAS.register("eval/zero_shot", EvalConfig)


@dataclass
class Settings:
    """How items are embedded: batch size, DataLoader workers, device, cache."""

    batch_size: int = 32
    workers: int = 0
    device: Optional[str] = None
    cache: bool = True
    cache_dir: Optional[str] = None
    progress: bool = True


def fingerprint_of(model: Any, modality: str) -> str:
    """The model's fingerprint for ``modality`` (a pooled video route: the anchor's + its settings)."""
    try:
        return model.fingerprint(modality)
    except BinderInputError:
        extra = digest(preprocessing_of(model, modality))
        return hashlib.sha256(f"{model.anchor.fingerprint()}:{modality}:{extra}".encode()).hexdigest()


def _options(adapter: Any) -> Dict[str, Any]:
    return dataclasses.asdict(adapter) if dataclasses.is_dataclass(adapter) else {}


def embedded(model: Any, adapter: Any, split: Split, records: Sequence[Record], tag: str, s: Settings) -> Entry:
    """The embeddings of ``records`` from the cache, or computed (and cached)."""
    modality = split.modality
    description = {
        "model": fingerprint_of(model, modality), "preprocessing": preprocessing_of(model, modality),
        "dataset": split.dataset, "split": tag, "options": _options(adapter),
        "protocol": [split.protocol.name, split.protocol.version],
        "records": digest([(r.id, str(r.source)) for r in records]),
        "files": digest(files_state([r.path for r in records if r.path] + list(split.files))),
    }
    key = digest(description)
    folder = entry_folder(eval_cache_root(s.cache_dir), split.dataset, tag, modality, key)
    if s.cache:
        entry = read_entry(folder, key)
        if entry is not None:
            log.info("embeddings of %s %s read from the cache (%s)", split.dataset, tag, folder)
            return entry
    vectors, kept, skipped = embed_records(model, modality, records, adapter.load, s.batch_size, s.workers,
                                           s.device, s.progress)
    if not s.cache:
        return Entry(vectors, kept, skipped, folder, hit=False)
    return write_entry(folder, key, description, vectors, kept, skipped)


def embedded_texts(model: Any, texts: Sequence[str], dataset: str, tag: str, s: Settings) -> np.ndarray:
    """Caption embeddings, through the same cache (keyed by the anchor and the strings)."""
    description = {"model": model.anchor.fingerprint(), "texts": digest(list(texts)), "dataset": dataset}
    key = digest(description)
    folder = entry_folder(eval_cache_root(s.cache_dir), dataset, tag, "text", key)
    entry = read_entry(folder, key) if s.cache else None
    if entry is not None:
        return entry.vectors
    vectors = embed_texts(model, texts)
    if s.cache:
        write_entry(folder, key, description, vectors, list(range(len(texts))), [])
    return vectors


def _model_names(model: Any, source: Optional[str], name: Optional[str]) -> Tuple[str, str]:
    described = model.anchor.describe() if hasattr(model, "anchor") else {}
    pretrained = source or str(described.get("pretrained") or "")
    return name or source or f"{type(model).__name__}:{described.get('model', '')}", pretrained


def _no_items(split: Split, skipped: List[Tuple[str, str]]) -> BinderInputError:
    reasons = "; ".join(f"{i}: {r}" for i, r in skipped[:3])
    return BinderInputError(f"no item of {split.dataset} split {split.split!r} could be used "
                            f"({len(skipped)} skipped, e.g. {reasons})")


def evaluate(model: Any, dataset: Any, root: "str | Path | None" = None, *, split: Optional[str] = None,
             templates: Optional[Sequence[str]] = None, templates_file: "str | Path | None" = None,
             options: Optional[Dict[str, Any]] = None, probe: bool = False, shots: Sequence[int] = SHOTS,
             seeds: Sequence[int] = SEEDS, probe_l2: float = 1e-3, batch_size: int = 32, workers: int = 0,
             device: Optional[str] = None, cache: bool = True, cache_dir: "str | Path | None" = None,
             json_path: "str | Path | None" = None, predictions: "str | Path | None" = None,
             chart: "str | Path | None" = None, model_name: Optional[str] = None, progress: bool = True) -> EvalResult:
    """Evaluate ``model`` on ``dataset`` with the dataset's protocol.

    Args:
        model: A model, or anything :func:`binder.load` accepts (a folder, ``imagebind_huge``,
            ``open_clip:ViT-B-32@...``).
        dataset: A registered dataset name (``binder eval --list``) or an adapter instance.
        root: The dataset's folder, laid out as its own download lays it out.
        split: The split (default: the dataset's evaluation split).
        templates: Prompt templates with ``{}`` (``@clip``, ``@sound``: named sets); default: the
            dataset's (CLIP's 80 templates, ImageBind's choice).
        templates_file: Templates one per line, instead of ``templates``.
        options: The dataset's protocol options (``binder eval --list`` shows them).
        probe: Few-shot linear probes (``shots`` per class, each with every seed) instead of zero-shot.
        batch_size, workers, device: How items are embedded (workers: DataLoader processes).
        cache: Use and fill the embedding cache (``cache_dir``; default ``$BINDER_CACHE/eval``).
        json_path, predictions, chart: Files to write: CLIP_benchmark JSON, Parquet, PNG.
        model_name: The ``model`` field of the JSON (default: the source given, or the anchor's name).

    Returns:
        An :class:`~binder.evaluation.results.EvalResult` (metrics, per-item predictions).
    """
    start = time.perf_counter()
    settings = Settings(batch_size, workers, device, cache, None if cache_dir is None else str(cache_dir), progress)
    adapter = build_adapter(dataset, options) if isinstance(dataset, str) else dataset
    if options and not isinstance(dataset, str):
        raise BinderInputError("options= applies to a dataset given by name; set them on the adapter instance instead")
    outputs = {"json": json_path, "predictions": predictions, "chart": chart}
    for what, path in outputs.items():
        if path is not None:
            check_writable(path, what)
    if templates is not None or templates_file is not None:
        resolve_templates(templates, templates_file)  # bad templates fail before any work
    if root is None and getattr(adapter, "needs_root", True):
        raise BinderInputError(f"{adapter.title} needs its folder: root= (--root), laid out as {adapter.layout}")
    root_path = Path(root).expanduser() if root is not None else None
    sp = adapter.read(root_path, split or adapter.default_split)  # the layout is checked before the model loads
    if not sp.records:
        raise BinderInputError(f"{adapter.title} split {sp.split!r} under {str(root)!r} holds no items"
                               + (f" ({len(sp.skipped)} listed but unusable, e.g. {sp.skipped[0]})"
                                  if sp.skipped else ""))
    source = str(model) if isinstance(model, (str, Path)) else None
    if source is not None:
        from binder.io import load

        model = load(source, device=device or "cpu")
    embedder = model_for(model, sp.modality)
    entry = embedded(embedder, adapter, sp, sp.records, sp.split, settings)
    skipped = list(sp.skipped) + list(entry.skipped)
    if not entry.kept:
        raise _no_items(sp, skipped)
    emb, kept = entry.vectors, entry.kept
    used = resolve_templates(templates, templates_file, default=sp.templates) if sp.task != RETRIEVAL else []
    if probe:
        metrics, rows, extra = _probe(embedder, adapter, root_path, sp, entry, settings, shots, seeds, probe_l2)
        task = "linear_probe"
    elif sp.task == RETRIEVAL:
        metrics, rows, extra = _retrieval(embedder, sp, emb, kept, settings)
        task = RETRIEVAL
    else:
        reduce = str(sp.protocol.choices.get("class_with_several_names", "max"))
        metrics, rows, extra = classify(embedder, sp, emb, kept, used, reduce)
        task = "zeroshot_classification"
    name, pretrained = _model_names(model, source, model_name)
    record = make_record(
        sp.dataset, name, pretrained, task, metrics, classnames=sp.classnames, templates=used,
        split=sp.split, modality=sp.modality, root=None if root is None else str(root),
        model_fingerprint=fingerprint_of(embedder, sp.modality), protocol={**sp.protocol.to_dict(),
                                                                             "options": _options(adapter)},
        n=len(kept), n_listed=len(sp.records), skipped=[{"id": i, "reason": r} for i, r in skipped],
        embedding_cache="hit" if entry.hit else ("miss" if cache else "off"), cache_entry=str(entry.path),
        wall_time_s=round(time.perf_counter() - start, 3), details=extra)
    result = EvalResult(record, rows)
    _write(result, outputs)
    return result


def _retrieval(model: Any, sp: Split, emb: np.ndarray, kept: List[int], s: Settings) -> Tuple[Dict, List, Dict]:
    captions, text_item = [], []
    for pos, i in enumerate(kept):
        for c in sp.records[i].captions or []:
            captions.append(c)
            text_item.append(pos)
    if not captions:
        raise BinderInputError(f"{sp.dataset} split {sp.split!r}: no item has a caption")
    text_emb = embedded_texts(model, captions, sp.dataset, sp.split, s)
    return retrieve(model, sp, emb, kept, text_emb, np.asarray(text_item), captions)


def _probe(model: Any, adapter: Any, root: Optional[Path], sp: Split, entry: Entry, s: Settings,
           shots: Sequence[int], seeds: Sequence[int], l2: float) -> Tuple[Dict, List, Dict]:
    """Few-shot probes: shots from ``sp.probe_train`` tested on the split, or cross-fold."""
    if sp.task != "zeroshot_classification":
        raise BinderInputError(f"few-shot probes need a single-label classification dataset; {sp.dataset} is {sp.task}")
    labels = np.array([sp.records[i].label for i in entry.kept])
    if sp.probe_train is not None:
        pool = adapter.read(root, sp.probe_train)
        train = embedded(model, adapter, pool, pool.records, pool.split, s)
        if not train.kept:
            raise BinderInputError(f"{sp.dataset}: no item of the {sp.probe_train!r} split (the probe's shots) "
                                   "could be read")
        train_y = np.array([pool.records[i].label for i in train.kept])
        folds = [(train.vectors, train_y, entry.vectors, labels)]
    else:
        groups = np.array([sp.records[i].group or "" for i in entry.kept], dtype=object)
        names = sorted(set(groups) - {""})
        if len(names) < 2:
            raise BinderInputError(f"{sp.dataset} split {sp.split!r} has no training data for a probe (no train split "
                                   "and fewer than two folds)")
        folds = [(entry.vectors[groups != g], labels[groups != g], entry.vectors[groups == g], labels[groups == g])
                 for g in names]
    metrics, details = few_shot(folds, len(sp.classnames), shots, seeds, l2)
    details["folds"] = len(folds)
    return metrics, [], details


def _write(result: EvalResult, outputs: Dict[str, Any]) -> None:
    if outputs["json"] is not None:
        result.paths["json"] = str(write_json(result.record, outputs["json"]))
    if outputs["predictions"] is not None:
        if not result.predictions:
            raise BinderInputError("a few-shot probe has no per-item predictions to write; drop --predictions")
        result.paths["predictions"] = str(write_predictions(result, outputs["predictions"]))
    if outputs["chart"] is not None:
        from binder.evaluation.chart import plot_result

        result.paths["chart"] = str(plot_result(result.record, result.predictions, outputs["chart"]))


# ----------------------------------------------------------------------------------------------
# The digits world: the same evaluator on in-memory inputs
# ----------------------------------------------------------------------------------------------

def evaluate_inputs(model: Any, modality: str, inputs: List[Any], labels: Any, classnames: Sequence[str],
                    templates: Sequence[str], name: str = "in-memory", batch_size: int = 64) -> EvalResult:
    """Zero-shot classification of raw in-memory ``inputs`` (paths, arrays) with integer ``labels``."""
    from binder.evaluation.memory import InMemory

    adapter = InMemory(name=name, modality=modality, inputs=list(inputs), labels=[int(v) for v in np.asarray(labels)],
                       classnames=list(classnames), templates=check_templates(templates))
    return evaluate(model, adapter, batch_size=batch_size, cache=False, progress=False)


def digits_row(result: EvalResult) -> Dict[str, float]:
    """The digits tables' row (chance, top1, top5, n) of a classification result."""
    m, b = result.metrics, result.record["binder"]
    return {"chance": b["details"]["chance_acc1"], "n": int(b["n"]), "top1": m["acc1"], "top5": m["acc5"]}


def zero_shot(model: Any, modality: str, inputs: List[Any], labels: np.ndarray, classnames: Sequence[str],
              templates: Sequence[str], batch_size: int = 64) -> Dict[str, float]:
    """Embed ``inputs`` with ``model`` and classify them against the class prompts (the digits row)."""
    return digits_row(evaluate_inputs(model, modality, inputs, labels, classnames, templates, batch_size=batch_size))
