"""Embedding a split's records in bulk through binder's one embedding loop: DataLoader workers
read and preprocess, the main process embeds, and an item that cannot be read is skipped with its
reason (never silently).

The model must embed the split's modality; an anchor-only model (an open_clip model, ``binder.load
("open_clip:...")``) embeds video the way ImageBind does (arXiv 2305.05665, appendix C: frames of
5 clips of 2 s through the frozen image tower, averaged), through binder's video modality in
``pooled`` mode, which has no weights of its own.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from binder.embedding import embed_inputs
from binder.errors import BinderError, BinderInputError
from binder.types import TEXT

log = logging.getLogger(__name__)

VIDEO = "video"
POOLED_VIDEO = {"mode": "pooled", "clips_per_sample": 5, "frames_per_clip": 2, "clip_duration": 2.0,
                "clip_policy": "imagebind", "spatial_crops": 3, "interpolation": "bilinear"}
"""ImageBind's video route (imagebind/data.py): 5 clips x 2 frames, 3 spatial crops, averaged."""


def model_for(model: Any, modality: str) -> Any:
    """``model`` if it embeds ``modality``; for video on a model without it, the model's anchor
    with a pooled video modality (ImageBind's route); else one error naming what it embeds."""
    if modality in model.modalities:
        return model
    if modality == VIDEO:
        try:
            from binder.model import BindModel

            settings = dict(POOLED_VIDEO)
            if getattr(model.anchor.image_config(), "resize_mode", "shortest") != "shortest":
                settings["spatial_crops"] = 1  # three crops need a resize + crop transform; a letterbox has one view
            pooled = BindModel(model.anchor, {VIDEO: settings}).eval()
        except BinderError as err:
            raise BinderInputError(f"this model has no video encoder and video cannot be pooled through its "
                                   f"anchor ({err}); it embeds {model.modalities}") from err
        log.info("video: frames pooled through the model's image tower (ImageBind's route)")
        return pooled
    raise BinderInputError(f"the dataset needs {modality} but this model has no {modality} encoder; "
                           f"it embeds {model.modalities}")


def preprocessing_of(model: Any, modality: str) -> Dict[str, Any]:
    """What turns a raw input into the model tensor (for the cache key)."""
    from binder.registry import config_to_dict

    if modality in getattr(model, "configs", {}):
        return {"modality": modality, "config": config_to_dict(model.configs[modality])}
    if modality == VIDEO:
        pre = model.item_preprocessor(VIDEO)
        cfg = getattr(pre, "cfg", None)
        return {"modality": modality, "config": config_to_dict(cfg) if cfg is not None else repr(pre)}
    if modality == "image":
        return {"modality": modality, "config": repr(model.anchor.image_config())}
    return {"modality": modality, "anchor": model.anchor.describe()}


def embed_records(model: Any, modality: str, records: Sequence[Any], load: Callable[[Any], Any],
                  batch_size: int = 32, workers: int = 0, device: "str | torch.device | None" = None,
                  show_progress: bool = True) -> Tuple[np.ndarray, List[int], List[Tuple[str, str]]]:
    """Embed ``records`` of ``modality`` with binder's one embedding loop
    (:func:`binder.embedding.embed_inputs`), skipping what cannot be read.

    Returns:
        (N', D) float32 unit vectors of the usable records, their indices into ``records`` (in
        order), and ``(record id, reason)`` of the skipped ones.
    """
    if device is not None:
        model.to(device)
    done = embed_inputs(model, modality, list(records), batch_size=batch_size, num_workers=workers, load=load,
                        on_error="skip", progress=show_progress)
    return done.vectors, done.kept, [(records[i].id, reason) for i, reason in done.skipped]


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(T, D) unit embeddings of ``texts`` through the anchor's text tower."""
    return model.embed(text=list(texts), batch_size=batch_size, progress=False)[TEXT].numpy()
