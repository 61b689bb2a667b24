"""Emergent zero-shot classification (ImageBind, arXiv 2305.05665, sec. 4.1).

Class embeddings are the anchor's text embeddings of every prompt template filled with the class
name, averaged and re-normalised (CLIP's prompt ensembling). Inputs of any modality are
classified by cosine similarity to them: for a bound modality that never saw text in training,
the accuracy is *emergent*.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def class_embeddings(anchor: Any, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Prompt-ensembled, L2-normalised class embeddings (C, D) from the anchor's text tower."""
    device = next(anchor.parameters()).device
    per_class = []
    for name in classnames:
        tokens = anchor.tokenize([t.format(name) for t in templates]).to(device)
        per_class.append(F.normalize(anchor.encode_text(tokens).mean(0), dim=-1))
    return torch.stack(per_class).float().cpu()  # (C, D)


def topk_accuracy(embeddings: torch.Tensor, labels: np.ndarray, classes: torch.Tensor,
                  ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy (percent) of nearest-class-embedding classification, with chance."""
    logits = embeddings.float() @ classes.T  # (N, C)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    ranked = logits.argsort(dim=-1, descending=True)
    out = {"chance": 100.0 / classes.shape[0], "n": int(len(labels_t))}
    for k in ks:
        hit = (ranked[:, : min(k, classes.shape[0])] == labels_t[:, None]).any(-1)
        out[f"top{k}"] = 100.0 * hit.float().mean().item()
    return out


def zero_shot(model: Any, modality: str, inputs: List[Any], labels: np.ndarray, classnames: Sequence[str],
              templates: Sequence[str], batch_size: int = 64) -> Dict[str, float]:
    """Embed ``inputs`` with ``model`` and classify them against the class prompts."""
    emb = model.embed(batch_size=batch_size, **{str(modality): inputs})[modality]
    classes = class_embeddings(model.anchor, classnames, templates)
    return topk_accuracy(emb, labels, classes)


def format_table(rows: Dict[str, Dict[str, float]], title: str) -> str:
    """A small fixed-width table: one row per entry with chance, top-1 and top-5."""
    lines = [title, f"{'':<28}{'chance':>8}{'top-1':>8}{'top-5':>8}{'n':>7}"]
    for name, r in rows.items():
        lines.append(f"{name:<28}{r['chance']:>8.1f}{r['top1']:>8.1f}{r.get('top5', float('nan')):>8.1f}{r['n']:>7d}")
    return "\n".join(lines)


def write_metrics(path: "str | Path", metrics: Dict[str, Any]) -> Path:
    """Write ``metrics`` as JSON, atomically."""
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    tmp.replace(path)
    return path
