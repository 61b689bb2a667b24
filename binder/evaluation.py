"""Emergent zero-shot classification (ImageBind, arXiv 2305.05665, sec. 4.1).

Class embeddings are the anchor's text embeddings of every prompt template filled with the class
name, averaged and re-normalised (CLIP's prompt ensembling). Inputs of any modality are
classified by cosine similarity to them: for a bound modality that never saw text in training,
the accuracy is *emergent*.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from binder.config import SCHEMAS
from binder.files import atomic_write


@dataclass
class EvalConfig:
    """End-of-run evaluation (the schema of the ``eval`` node)."""

    zero_shot: bool = True  # emergent zero-shot table + metrics.json at the end of the run
    batch_size: int = 64  # inputs per forward pass


SCHEMAS.register("eval/zero_shot", EvalConfig)


@torch.no_grad()
def class_embeddings(encode_text: Callable[[torch.Tensor], torch.Tensor], tokenize: Callable[[List[str]], torch.Tensor],
                     classnames: Sequence[str], templates: Sequence[str], device: "torch.device | str" = "cpu") -> torch.Tensor:
    """Prompt-ensembled, L2-normalised class embeddings (C, D): per class, the mean of the
    normalised text embeddings of every template, re-normalised."""
    per_class = []
    for name in classnames:
        tokens = tokenize([t.format(name) for t in templates]).to(device)
        per_class.append(F.normalize(F.normalize(encode_text(tokens).float(), dim=-1).mean(0), dim=-1))
    return torch.stack(per_class).cpu()  # (C, D)


def anchor_class_embeddings(anchor: Any, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """:func:`class_embeddings` from a frozen anchor's text tower."""
    device = next(anchor.parameters()).device
    return class_embeddings(anchor.encode_text, anchor.tokenize, classnames, templates, device)


def topk_from_scores(scores: torch.Tensor, labels: Any, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy (percent) of class scores (N, C) against integer labels, with chance."""
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


def zero_shot(model: Any, modality: str, inputs: List[Any], labels: np.ndarray, classnames: Sequence[str],
              templates: Sequence[str], batch_size: int = 64) -> Dict[str, float]:
    """Embed ``inputs`` with ``model`` and classify them against the class prompts."""
    emb = model.embed(batch_size=batch_size, progress=False, **{modality: inputs})[modality]
    return topk_accuracy(emb, labels, anchor_class_embeddings(model.anchor, classnames, templates))


def format_table(rows: Dict[str, Dict[str, float]], title: str) -> str:
    """A small fixed-width table: one row per entry with chance, top-1 and top-5."""
    lines = [title, f"{'':<30}{'chance':>8}{'top-1':>8}{'top-5':>8}{'n':>7}"]
    for name, r in rows.items():
        lines.append(f"{name:<30}{r['chance']:>8.1f}{r['top1']:>8.1f}{r.get('top5', float('nan')):>8.1f}{r['n']:>7d}")
    return "\n".join(lines)


def write_metrics(path: "str | Path", metrics: Dict[str, Any]) -> Path:
    """Write ``metrics`` as JSON, atomically."""
    return atomic_write(path, json.dumps(metrics, indent=2))
