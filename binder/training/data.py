"""Data modules for binding: (X, target) pairs for every bound modality of a run.

A data module is named in the ``data`` config group by ``_target_`` and built by
:func:`build_datamodule` with the model, the modalities to train and the target (``image``:
ImageBind's emergent route; ``text``: the text-paired baseline; ``label``: the supervised
reference). Each modality gets its own paired data, as in ImageBind, which trains every modality
against images it was captured with: ``train_dataloader`` combines one loader per modality
(:func:`combine`: every step takes a batch of each modality that still has one, so each modality
sees exactly the batches it would in a run of its own), ``val_dataloader`` gives one loader per
modality in :attr:`PairedDataModule.val_modalities` order. Every batch is a dict keyed by modality name, plus
``label`` where the data has classes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from binder.config import build_dataclass, check_keys, instantiate, to_dict
from binder.errors import BinderConfigError
from binder.registry import get_modality
from binder.training.cache import AnchorCache, AnchorImages

log = logging.getLogger(__name__)

TARGETS = ("image", "text", "label")
SKIPPED = "skipped"
"""Batch key: how many samples of the batch could not be read and were left out."""


def combine(loaders: Dict[str, DataLoader]) -> CombinedLoader:
    """One training loader over ``{modality: DataLoader}``: an epoch lasts as long as the longest;
    a modality whose loader is done gives ``None`` for the rest of the epoch (``max_size`` mode)."""
    return CombinedLoader(loaders, mode="max_size")


class PairedDataModule(L.LightningDataModule):
    """Base of binder's data modules: options validated against ``Config``, one dataset per modality.

    Args:
        model: The model whose preprocessors and anchor the data uses.
        modalities: The bound modalities to produce pairs for.
        target: ``image``, ``text`` or ``label`` (what X is paired with).
        **options: Fields of the subclass's ``Config`` dataclass (the ``data`` config group).
    """

    Config: type = None  # set by subclasses
    targets: Tuple[str, ...] = TARGETS

    def __init__(self, model: Any, modalities: Sequence[str], target: str = "image", **options: Any) -> None:
        super().__init__()
        self.cfg = build_dataclass(self.Config, options, "data")
        if target not in self.targets:
            raise BinderConfigError(f"{type(self).__name__} pairs data with {list(self.targets)}, "
                                    f"not target={target!r}")
        self.model, self.anchor, self.target = model, model.anchor, target
        self.modalities = list(modalities)
        self.preprocessors = {m: model.preprocessors[m] for m in self.modalities}
        self.augments = {m: self._augment(m) for m in self.modalities}
        self.train_sets: Dict[str, Any] = {}
        self.val_sets: Dict[str, Any] = {}
        self.target_cache: Optional[AnchorCache] = None  # anchor.cache: pairs carry cached image embeddings
        self.pin_memory = False  # speed.pin_memory: page-locked batches for a GPU
        self.device_features: set = set()  # speed.audio_features=device: modalities read raw, featurised on the device

    def use_cache(self, cache: Optional[AnchorCache]) -> None:
        """Pair X with the cached anchor embeddings of its images (set before ``setup``)."""
        self.target_cache = cache

    def anchor_images(self) -> AnchorImages:
        """Every paired image with its sample id and a fingerprint of the data (what
        :mod:`binder.training.cache` embeds once). Data modules that support the cache override it."""
        raise BinderConfigError(f"{type(self).__name__} cannot use an anchor cache: set anchor.cache=null")

    def fingerprint(self) -> Dict[str, Any]:
        """What every process of a multi-process run must agree on about the data."""
        return {"module": type(self).__name__, "modalities": self.modalities, "target": self.target,
                "train": {m: len(ds) for m, ds in self.train_sets.items()},
                "val": {m: len(ds) for m, ds in self.val_sets.items()}}

    def _augment(self, modality: str) -> Optional[Callable]:
        spec = get_modality(modality)
        if spec.augment_cls is None or not getattr(self.cfg, "augment", True):
            return None
        return spec.augment_cls(self.model.configs[modality])

    @classmethod
    def check(cls, options: Dict[str, Any], modalities: Sequence[str], target: str) -> str:
        """Cheap checks of paths and options before anything is built; returns a one-line
        description of the data for the run's header. Subclasses extend it."""
        build_dataclass(cls.Config, options, "data")
        return cls.__name__

    @property
    def val_modalities(self) -> List[str]:
        """Modalities with a validation loader, in ``val_dataloader`` order."""
        return [m for m in self.modalities if len(self.val_sets.get(m, ())) > 0]

    @property
    def classnames(self) -> List[str]:
        """Class names for zero-shot evaluation (empty without labels)."""
        return []

    @property
    def templates(self) -> List[str]:
        """Prompt templates ("a photo of a {}.") for zero-shot evaluation."""
        return []

    def zero_shot_set(self, modality: str) -> Tuple[List[Any], np.ndarray]:
        """Held-out raw inputs of ``modality`` and their label indices (empty without labels)."""
        return [], np.zeros(0, dtype=np.int64)


def pad_raw(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Zero-pad the raw clips (``{"wave": (K, T), "rate", "length"}``, from a preprocessor's
    ``raw``) of a batch's items to the longest ``T`` (clips of other rates differ), so they collate."""
    for key in {k for item in items for k, v in item.items() if isinstance(v, dict) and "wave" in v}:
        longest = max(item[key]["wave"].shape[-1] for item in items)
        for item in items:
            wave = item[key]["wave"]
            if wave.shape[-1] < longest:
                item[key] = {**item[key], "wave": torch.nn.functional.pad(wave, (0, longest - wave.shape[-1]))}
    return items


def data_target(node: Any) -> Any:
    """The data module class named by a ``data`` config node (its keys checked)."""
    return check_keys(node, "data", allowed_extra=("model", "modalities", "target"))


def check_data(node: Any, modalities: Sequence[str], target: str) -> str:
    """Validate the ``data`` node (keys, paths) before anything expensive; a one-line description."""
    cls = data_target(node)
    options = {k: v for k, v in to_dict(node).items() if not k.startswith("_")}
    return cls.check(options, modalities, target) if hasattr(cls, "check") else cls.__name__


def build_datamodule(node: Any, model: Any, modalities: Sequence[str], target: str = "image") -> Any:
    """The data module named by ``node._target_`` for ``modalities`` paired with ``target``."""
    return instantiate(node, "data", model=model, modalities=list(modalities), target=target)
