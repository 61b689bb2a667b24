"""Embedding arithmetic: one query from several modalities (ImageBind, arXiv 2305.05665, sec. 4.3).

ImageBind composes a query by L2-normalising each modality's embedding, summing them and
renormalising ("image of fruits + sound of birds -> images of birds in fruit trees"). Taken
literally, the sum is dominated by whichever modality's similarities to the gallery spread
widest: an image embedding lies close to the anchor's image space, an audio embedding (trained
through a temperature-scaled InfoNCE) much less so, so ``0.5 image + 0.5 audio`` ranks by the
image alone. binder therefore *calibrates* each modality once per model: its **spread**, the
standard deviation over a set of anchor image embeddings of a query's cosine similarities,
averaged over queries (:func:`measure_spread`). The weights a user gives are contributions:
modality ``m`` enters the sum with ``w_m / spread_m`` (normalised to sum to one), so equal weights
give every modality an equal say in the ranking. Spreads are saved with the model
(``query_scales`` in ``binder_config.json``); a model without them composes uncalibrated
(ImageBind's plain sum) and says so once.
"""
from __future__ import annotations

import logging
import math
import numbers
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from binder.errors import BinderInputError
from binder.types import modality_name

log = logging.getLogger(__name__)

Weights = Union[None, Sequence[float], Mapping[str, float]]


def check_weights(weights: Weights, modalities: Sequence[str]) -> Dict[str, float]:
    """``weights`` (None: equal; a sequence in the order of ``modalities``; a mapping by name)
    -> ``{modality: weight}``, every weight finite and >= 0, at least one > 0.

    Raises:
        BinderInputError: a count or a name that does not match the query, a negative, NaN or
            non-numeric weight, or weights that are all zero.
    """
    if weights is None:
        out = {m: 1.0 for m in modalities}
    elif isinstance(weights, Mapping):
        names = {modality_name(k): v for k, v in weights.items()}
        if set(names) != set(modalities):
            raise BinderInputError(f"weights are given for {sorted(names)} but the query has {list(modalities)}; "
                                   "give one weight per query modality")
        out = {m: names[m] for m in modalities}
    else:
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise BinderInputError(f"weights must be a list of numbers or a dict by modality, got {weights!r}")
        if len(weights) != len(modalities):
            raise BinderInputError(f"{len(weights)} weight(s) {list(weights)} for {len(modalities)} query "
                                   f"modalit{'y' if len(modalities) == 1 else 'ies'} {list(modalities)}")
        out = dict(zip(modalities, weights))
    for m, w in out.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise BinderInputError(f"the weight of {m} must be a finite number >= 0, got {w!r}")
    if not any(w > 0 for w in out.values()):
        raise BinderInputError(f"weights {list(out.values())} are all zero: at least one must be > 0")
    return {m: float(w) for m, w in out.items()}


def effective_weights(weights: Dict[str, float], spreads: Optional[Mapping[str, float]]) -> Dict[str, float]:
    """Contributions -> the multipliers of the unit embeddings: ``w_m / spread_m``, summing to 1.
    A modality without a spread counts as spread 1 (uncalibrated)."""
    spreads = spreads or {}
    raw = {m: w / float(spreads.get(m, 1.0)) for m, w in weights.items()}
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}


def compose_embeddings(embeddings: Mapping[str, torch.Tensor], weights: Weights = None,
                       spreads: Optional[Mapping[str, float]] = None) -> torch.Tensor:
    """Compose per-modality embeddings into one query per row.

    Args:
        embeddings: ``{modality: (N, D) or (D,)}``; rows are queries, a single row is broadcast
            to the others' N.
        weights: Contributions (see :func:`check_weights`); None gives equal ones.
        spreads: Per-modality spreads (:func:`measure_spread`); None composes uncalibrated.

    Returns:
        (N, D) float32 unit-norm queries.

    Raises:
        BinderInputError: an empty query, mismatched sizes or weights, non-finite embeddings.
    """
    if not embeddings:
        raise BinderInputError("an empty query: give at least one modality, e.g. {'image': ..., 'audio': ...}")
    names = [modality_name(m) for m in embeddings]
    mults = effective_weights(check_weights(weights, names), spreads)
    rows = {m: _as_rows(m, z) for m, z in zip(names, embeddings.values())}
    dims = {z.shape[1] for z in rows.values()}
    counts = {z.shape[0] for z in rows.values()} - {1}
    if len(dims) > 1:
        raise BinderInputError(f"embeddings of different sizes cannot be composed: "
                               f"{ {m: z.shape[1] for m, z in rows.items()} }")
    if len(counts) > 1:
        raise BinderInputError(f"query modalities have different numbers of inputs "
                               f"{ {m: z.shape[0] for m, z in rows.items()} }: give the same number, or one")
    total = sum(mults[m] * F.normalize(z, dim=-1) for m, z in rows.items())  # (N, D), broadcast over 1-rows
    return F.normalize(total, dim=-1)


def _as_rows(modality: str, z: Any) -> torch.Tensor:
    """One modality's embeddings as a float32 (N, D) tensor with N >= 1."""
    z = torch.as_tensor(z, dtype=torch.float32)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise BinderInputError(f"{modality} embeddings must be (N, D) or (D,) with N, D >= 1, got {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise BinderInputError(f"{modality} embeddings hold NaN or infinite values")
    if (z.norm(dim=-1) == 0).any():
        raise BinderInputError(f"{modality} embeddings hold an all-zero row, which has no direction")
    return z


def measure_spread(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """How widely a modality's queries spread their similarities over a gallery of anchor image
    embeddings: the std over the gallery of cosine similarity, averaged over queries.

    Args:
        queries: (Q, D) unit embeddings of one modality.
        gallery: (G, D) unit anchor image embeddings, G >= 2.
    """
    if queries.shape[0] < 1 or gallery.shape[0] < 2:
        raise BinderInputError(f"calibration needs >= 1 query and >= 2 gallery images, got {queries.shape[0]} "
                               f"and {gallery.shape[0]}")
    sims = queries.float() @ gallery.float().T  # (Q, G)
    return float(sims.std(dim=1).mean())


_warned: set = set()


def warn_uncalibrated(model: Any, modalities: Sequence[str]) -> None:
    """Log once per model and modality set when a multi-modality query is composed without spreads."""
    missing = [m for m in modalities if m not in getattr(model, "query_spreads", {})]
    key = (id(model), tuple(missing))
    if len(modalities) > 1 and missing and key not in _warned:
        _warned.add(key)
        log.warning("this model has no calibration for %s: composing uncalibrated (ImageBind's plain sum), so one "
                    "modality may dominate; run model.calibrate(images, %s=[...]) once and save the model",
                    missing, next((m for m in missing if m != "image"), missing[0]))


@torch.no_grad()
def calibrate_from_datamodule(model: Any, datamodule: Any, limit: int = 1024) -> Dict[str, float]:
    """Calibrate ``model`` (:meth:`~binder.BindModel.calibrate_embeddings`) on a data module's
    held-out pairs: the gallery is their anchor images, the queries each bound modality's inputs,
    the images themselves and, where the data has classes, its class prompts. Needs image pairs
    (``target=image``); returns ``{}`` otherwise.

    Args:
        model: The trained model.
        datamodule: A set-up :class:`~binder.data.PairedDataModule`.
        limit: At most this many pairs per modality.
    """
    from binder.types import IMAGE, IMAGE_EMBEDDING, TEXT

    gallery, queries = [], {}
    loaders = datamodule.val_dataloader()
    for modality, loader in zip(datamodule.val_modalities, loaders if isinstance(loaders, list) else [loaders]):
        parts, seen = [], 0
        for batch in loader:
            if batch is None or modality not in batch:
                continue
            if (IMAGE not in batch and IMAGE_EMBEDDING not in batch) or seen >= limit:
                break
            x = batch[modality]
            if isinstance(x, dict):  # raw clips whose features are computed on the device
                x = model.preprocessors[modality].features({k: v.to(model.device) for k, v in x.items()})
            parts.append(model.encode(modality, x.to(model.device)).float().cpu())
            gallery.append(batch[IMAGE_EMBEDDING].float() if IMAGE_EMBEDDING in batch else  # an anchor cache's
                           model.encode(IMAGE, batch[IMAGE].to(model.device)).float().cpu())
            seen += len(parts[-1])
        if parts:
            queries[modality] = torch.cat(parts)
    if not gallery:
        return {}
    images = torch.cat(gallery)
    queries[IMAGE] = images[:limit]
    if datamodule.classnames and datamodule.templates:
        prompts = [t.format(c) for c in datamodule.classnames for t in datamodule.templates]
        queries[TEXT] = model.embed(text=prompts, progress=False)[TEXT]
    spreads = model.calibrate_embeddings(images, queries)
    log.info("query calibration (similarity spread over %d held-out images): %s", len(images),
             ", ".join(f"{m} {s:.3f}" for m, s in spreads.items()))
    return spreads
