"""Zero-shot classification (single- and multi-label) and zero-shot retrieval on embedded splits.

Classification follows ImageBind (arXiv 2305.05665, sec. 4.1): an item's class scores are the
cosines between its embedding and the prompt-ensembled text embeddings of the class names
(:mod:`binder.evaluation.prompts`); a class with several names scores as the maximum over them
(ImageBind appendix B for NYU-D's "other"). Where the protocol reports groups separately (ESC-50's
five folds), each metric is the mean over the groups. Retrieval ranks every item for every caption
and every caption for every item (:func:`binder.evaluation.metrics.retrieval_metrics`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from binder.evaluation.base import MULTILABEL, Split
from binder.evaluation.metrics import classification_metrics, multilabel_metrics, retrieval_metrics
from binder.evaluation.prompts import class_embeddings, grouped_scores

Rows = List[Dict[str, Any]]


def class_scores(model: Any, split: Split, embeddings: np.ndarray, templates: Sequence[str],
                 reduce: str = "max") -> np.ndarray:
    """(N, C) class scores of ``embeddings`` against the split's class prompts."""
    names: List[str] = []
    owner: List[int] = []
    for c in range(len(split.classnames)):
        for name in split.names_of(c):
            names.append(name)
            owner.append(c)
    anchor = model.anchor
    device = next(anchor.parameters()).device
    name_emb = class_embeddings(anchor.encode_text, anchor.tokenize, names, templates, device)  # (names, D)
    scores = grouped_scores(torch.from_numpy(embeddings), name_emb, owner, len(split.classnames), reduce)
    return scores.numpy()


def _top5(scores: np.ndarray, classnames: Sequence[str]) -> Tuple[np.ndarray, List[List[str]], List[List[float]]]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    names = [[classnames[j] for j in row] for row in order]
    values = [[float(scores[i, j]) for j in row] for i, row in enumerate(order)]
    return order, names, values


def classify(model: Any, split: Split, embeddings: np.ndarray, kept: Sequence[int], templates: Sequence[str],
             reduce: str = "max") -> Tuple[Dict[str, float], Rows, Dict[str, Any]]:
    """Zero-shot classification of the embedded records ``kept`` (indices into ``split.records``).

    Returns:
        (metrics, one prediction row per item, extra details: chance, per-group metrics).
    """
    scores = class_scores(model, split, embeddings, templates, reduce)
    records = [split.records[i] for i in kept]
    order, top_names, top_scores = _top5(scores, split.classnames)
    chance = 100.0 / len(split.classnames)
    if split.task == MULTILABEL:
        targets = np.zeros(scores.shape, dtype=bool)
        for r, rec in enumerate(records):
            targets[r, rec.labels or []] = True
        metrics = multilabel_metrics(scores, targets)
        truths = [[split.classnames[c] for c in rec.labels or []] for rec in records]
        correct = [bool(targets[r, order[r, 0]]) for r in range(len(records))]
        extra: Dict[str, Any] = {"chance_mean_average_precision": 100.0 * float(targets.mean())}
    else:
        labels = np.array([rec.label for rec in records], dtype=np.int64)
        metrics, extra = _grouped_metrics(scores, labels, [rec.group for rec in records])
        truths = [[split.classnames[c]] for c in labels]
        correct = [bool(order[r, 0] == labels[r]) for r in range(len(records))]
        extra["chance_acc1"] = chance
    rows = [{"id": rec.id, "true": truths[r], "top5": top_names[r], "top5_scores": top_scores[r],
             "correct": correct[r], "group": rec.group or ""} for r, rec in enumerate(records)]
    return metrics, rows, extra


def _grouped_metrics(scores: np.ndarray, labels: np.ndarray, groups: Sequence[Any]) -> Tuple[Dict[str, float], Dict]:
    """Metrics over all items, or the mean over groups (folds) when the records have groups."""
    names = sorted({g for g in groups if g is not None})
    if not names:
        return classification_metrics(scores, labels), {}
    per_group = {}
    groups_a = np.array([g if g is not None else "" for g in groups], dtype=object)
    for g in names:
        mask = groups_a == g
        per_group[str(g)] = {**classification_metrics(scores[mask], labels[mask]), "n": int(mask.sum())}
    metrics = {k: float(np.mean([m[k] for m in per_group.values()])) for k in ("acc1", "acc5", "mean_per_class_recall")}
    metrics["acc1_std_over_groups"] = float(np.std([m["acc1"] for m in per_group.values()]))
    return metrics, {"per_group": per_group, "reported": "mean over groups"}


def retrieve(model: Any, split: Split, item_emb: np.ndarray, kept: Sequence[int], text_emb: np.ndarray,
             text_item: np.ndarray, captions: Sequence[str]) -> Tuple[Dict[str, float], Rows, Dict[str, Any]]:
    """Zero-shot retrieval in both directions between the embedded items and their captions.

    Args:
        item_emb: (N, D) embeddings of ``split.records[kept[i]]``.
        text_emb: (T, D) caption embeddings; ``text_item[t]`` indexes ``item_emb``.
    """
    out = retrieval_metrics(text_emb, item_emb, text_item, split.modality)
    sim = out["similarity"]  # (T, N)
    ids = [split.records[i].id for i in kept]
    rows: Rows = []
    top_items = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    for t, rank in enumerate(out["text_to_item_ranks"]):
        rows.append({"id": captions[t], "direction": f"text->{split.modality}", "true": [ids[text_item[t]]],
                     "top5": [ids[j] for j in top_items[t]], "top5_scores": [float(sim[t, j]) for j in top_items[t]],
                     "rank": int(rank), "correct": bool(rank == 0)})
    top_texts = np.argsort(-sim.T, axis=1, kind="stable")[:, :5]
    for i, rank in enumerate(out["item_to_text_ranks"]):
        rows.append({"id": ids[i], "direction": f"{split.modality}->text",
                     "true": [captions[t] for t in np.flatnonzero(text_item == i)],
                     "top5": [captions[j] for j in top_texts[i]],
                     "top5_scores": [float(sim[j, i]) for j in top_texts[i]],
                     "rank": int(rank), "correct": bool(rank == 0)})
    extra = {"captions": int(len(captions)), "items": int(len(ids)),
             "chance_recall@1": 100.0 / max(1, len(ids))}
    return out["metrics"], rows, extra
