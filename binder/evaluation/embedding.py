"""Embedding a split's records in bulk: DataLoader workers read and preprocess, the main process
embeds, and an item that cannot be read is skipped with its reason (never silently).

The model must embed the split's modality; an anchor-only model (an open_clip model, ``binder.load
("open_clip:...")``) embeds video the way ImageBind does (arXiv 2305.05665, appendix C: frames of
5 clips of 2 s through the frozen image tower, averaged), through binder's video modality in
``pooled`` mode, which has no weights of its own.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from binder.errors import BinderError, BinderInputError
from binder.logs import progress
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
    from binder.model import config_to_dict

    if modality in getattr(model, "configs", {}):
        return {"modality": modality, "config": config_to_dict(model.configs[modality])}
    if modality == VIDEO:
        pre = model.item_preprocessor(VIDEO)
        cfg = getattr(pre, "cfg", None)
        return {"modality": modality, "config": config_to_dict(cfg) if cfg is not None else repr(pre)}
    if modality == "image":
        return {"modality": modality, "config": repr(model.anchor.image_config())}
    return {"modality": modality, "anchor": model.anchor.describe()}


class _Loaded(Dataset):
    """Record i -> (i, model tensor) or (i, reason it cannot be used)."""

    def __init__(self, records: Sequence[Any], load: Callable[[Any], Any], preprocess: Callable[..., torch.Tensor]) -> None:
        self.records, self.load, self.preprocess = records, load, preprocess

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Tuple[int, Any]:
        try:
            x = self.preprocess(self.load(self.records[i]))
        except BinderError as err:
            return i, str(err)
        except Exception as err:  # a decoder's own error: report it, keep going
            return i, f"{type(err).__name__}: {err}"
        if not torch.isfinite(x).all():
            return i, "preprocessing gave NaN or infinite values"
        return i, x


def _collate(batch: List[Tuple[int, Any]]) -> Tuple[List[int], Optional[torch.Tensor], List[Tuple[int, str]]]:
    good = [(i, x) for i, x in batch if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in batch if not isinstance(x, torch.Tensor)]
    shapes = {tuple(x.shape) for _, x in good}
    if len(shapes) > 1:
        common = max(shapes, key=lambda s: sum(tuple(x.shape) == s for _, x in good))
        bad += [(i, f"preprocessed to shape {tuple(x.shape)}, the batch has {common}") for i, x in good
                if tuple(x.shape) != common]
        good = [(i, x) for i, x in good if tuple(x.shape) == common]
    return [i for i, _ in good], torch.stack([x for _, x in good]) if good else None, bad


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the main process for cores


@torch.no_grad()
def embed_records(model: Any, modality: str, records: Sequence[Any], load: Callable[[Any], Any],
                  batch_size: int = 32, workers: int = 0, device: "str | torch.device | None" = None,
                  show_progress: bool = True) -> Tuple[np.ndarray, List[int], List[Tuple[str, str]]]:
    """Embed ``records`` of ``modality``.

    Returns:
        (N', D) float32 unit vectors of the usable records, their indices into ``records`` (in
        order), and ``(record id, reason)`` of the skipped ones.
    """
    if device is not None:
        model.to(device)
    loader = DataLoader(_Loaded(list(records), load, model.item_preprocessor(modality)), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, worker_init_fn=_worker_init if workers else None)
    was_training = model.training
    model.eval()
    kept: List[int] = []
    parts: List[np.ndarray] = []
    skipped: List[Tuple[str, str]] = []
    try:
        for idx, x, bad in progress(loader, f"embed {modality}", enabled=show_progress, unit="batch"):
            skipped += [(records[i].id, reason) for i, reason in bad]
            if x is None:
                continue
            z = model.encode(modality, x.to(model.device)).float().cpu()  # (b, D)
            finite = torch.isfinite(z).all(-1)
            skipped += [(records[i].id, "non-finite embedding") for i, ok in zip(idx, finite) if not ok]
            kept += [i for i, ok in zip(idx, finite) if ok]
            parts.append(z[finite].numpy())
    finally:
        model.train(was_training)
    dim = model.anchor.embed_dim
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    order = np.argsort(kept, kind="stable")
    return vectors[order], [kept[i] for i in order], skipped


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(T, D) unit embeddings of ``texts`` through the anchor's text tower."""
    return model.embed(text=list(texts), batch_size=batch_size, progress=False)[TEXT].numpy()
