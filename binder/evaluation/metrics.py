"""Metrics, named as LAION's CLIP_benchmark names them (so its tooling reads binder's results).

* classification: ``acc1``, ``acc5`` (percent of items whose true class is in the top 1 / 5),
  ``mean_per_class_recall`` (the mean over classes of the share of the class's items ranked
  first: balanced accuracy);
* multi-label (AudioSet): ``mean_average_precision``, the mean over classes with at least one
  positive of the average precision of the class's scores (AudioSet's and ImageBind's mAP,
  arXiv 2305.05665 Table 2; scikit-learn's ``average_precision_score`` definition, no interpolation);
* retrieval: ``<x>_retrieval_recall@k``, the share of queries with a correct item in the top k,
  where ``x`` is what is retrieved (``audio_retrieval_recall@1``: text -> audio;
  ``text_retrieval_recall@1``: audio -> text); an item with several captions is found by any of
  them, and each caption is one query.
Scores are percentages (0-100), as ImageBind's tables print them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch


def topk_from_scores(scores: torch.Tensor, labels: Any, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy (percent) of class scores (N, C) against integer labels, with chance
    (keys ``top1``, ``top5``, ``chance``, ``n``: the digits tables' row)."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    ranked = scores.float().argsort(dim=-1, descending=True)
    out: Dict[str, float] = {"chance": 100.0 / scores.shape[1], "n": int(len(labels_t))}
    for k in ks:
        hit = (ranked[:, : min(k, scores.shape[1])] == labels_t[:, None]).any(-1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def topk_accuracy(embeddings: torch.Tensor, labels: Any, classes: torch.Tensor,
                  ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy (percent) of nearest-class-embedding classification, with chance."""
    return topk_from_scores(embeddings.float() @ classes.float().T, labels, ks)


def classification_metrics(scores: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    """``acc1``, ``acc5`` and ``mean_per_class_recall`` (percent) of scores (N, C)."""
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {}
    for k in (1, 5):
        out[f"acc{k}"] = 100.0 * float((order[:, : min(k, scores.shape[1])] == labels[:, None]).any(1).mean())
    top1 = order[:, 0]
    present = np.unique(labels)
    out["mean_per_class_recall"] = 100.0 * float(np.mean([(top1[labels == c] == c).mean() for c in present]))
    return out


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of one class: the mean, over its positives, of the precision at each
    positive's rank (ties broken by item order)."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray) -> Dict[str, float]:
    """``mean_average_precision`` (percent) over classes with a positive, and how many those are."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1]) if targets[:, c].any()]
    return {"mean_average_precision": 100.0 * float(np.mean(aps)) if aps else float("nan"),
            "classes_with_positives": float(len(aps))}


def ranks_of(similarity: np.ndarray, positives: List[np.ndarray]) -> np.ndarray:
    """For each query row of ``similarity`` (Q, N), the best (0-based) rank among its positive columns."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    for q, pos in enumerate(positives):
        ranks[q] = int(np.flatnonzero(np.isin(order[q], pos)).min())
    return ranks


def recall_at(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> Dict[int, float]:
    """``{k: percent of queries ranked below k}``."""
    return {k: 100.0 * float((ranks < k).mean()) for k in ks}


def retrieval_metrics(text_emb: np.ndarray, item_emb: np.ndarray, text_item: np.ndarray, item_name: str,
                      ks: Sequence[int] = (1, 5, 10)) -> Dict[str, Any]:
    """Both directions of caption retrieval.

    Args:
        text_emb: (T, D) caption embeddings; ``text_item[t]`` is the item caption t describes.
        item_emb: (N, D) item embeddings.
        item_name: What the items are (``audio``, ``video``), for the metric names.

    Returns:
        Metrics, plus ``ranks`` (text -> item rank per caption, item -> text rank per item).
    """
    sim = text_emb @ item_emb.T  # (T, N)
    t2i = ranks_of(sim, [np.array([i]) for i in text_item])
    captions_of = [np.flatnonzero(text_item == i) for i in range(item_emb.shape[0])]
    i2t = ranks_of(sim.T, captions_of)
    metrics: Dict[str, Any] = {}
    for k, v in recall_at(t2i, ks).items():
        metrics[f"{item_name}_retrieval_recall@{k}"] = v
    for k, v in recall_at(i2t, ks).items():
        metrics[f"text_retrieval_recall@{k}"] = v
    return {"metrics": metrics, "text_to_item_ranks": t2i, "item_to_text_ranks": i2t, "similarity": sim}
