"""Evaluation: ``binder eval`` / :func:`binder.evaluate` on the field's benchmarks and users' data.

Zero-shot classification and retrieval (ImageBind, arXiv 2305.05665, sec. 4.1) and few-shot
linear probes (sec. 4.2) on datasets read from their official layouts, each adapter writing its
protocol down (:mod:`binder.evaluation.datasets`, registered in :data:`DATASETS`); an embedding
cache; LAION CLIP_benchmark JSON, per-item predictions, charts and ``compare``. Modules: ``base``
(records, splits, the registry), ``prompts``, ``metrics``, ``embedding``, ``cache``, ``tasks``,
``probe``, ``results``, ``chart``, ``run`` (:func:`evaluate`), ``cli``, ``mteb_encoder``.
"""
from binder.evaluation.base import (
    DATASETS,
    DatasetAdapter,
    ProtocolInfo,
    Record,
    Split,
    list_datasets,
    register_dataset,
)
from binder.evaluation.metrics import topk_accuracy, topk_from_scores
from binder.evaluation.prompts import CLIP_TEMPLATES, anchor_class_embeddings, class_embeddings
from binder.evaluation.results import EvalResult, format_table, read_records, write_json, write_metrics
from binder.evaluation.run import EvalConfig, evaluate, evaluate_inputs, digits_row, zero_shot

__all__ = [
    "CLIP_TEMPLATES", "DATASETS", "DatasetAdapter", "EvalConfig", "EvalResult", "ProtocolInfo", "Record", "Split",
    "anchor_class_embeddings", "class_embeddings", "digits_row", "evaluate", "evaluate_inputs", "format_table",
    "list_datasets", "read_records", "register_dataset", "topk_accuracy", "topk_from_scores", "write_json",
    "write_metrics", "zero_shot",
]
