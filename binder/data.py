"""Builds the DataModule named by ``cfg.data.kind`` for one bound modality."""
from __future__ import annotations

from typing import Any, Callable, Dict

from binder.config import to_dict
from binder.errors import BinderInputError
from binder.registry import get_modality
from binder.types import Modality


def _fields(cls: type, cfg: Any) -> Dict[str, Any]:
    values = to_dict(cfg)
    return {k: v for k, v in values.items() if k in cls.__dataclass_fields__}


def _digits(cfg: Any, model: Any, modality: Modality, partner: str, augment: Callable) -> Any:
    from binder_datasets.digits import DigitsConfig, DigitsDataModule

    return DigitsDataModule(DigitsConfig(**_fields(DigitsConfig, cfg)), modality, model.preprocessors[modality],
                            model.anchor, partner=partner, augment=augment)


def _manifest(cfg: Any, model: Any, modality: Modality, partner: str, augment: Callable) -> Any:
    from binder_datasets.manifest import ManifestConfig, ManifestDataModule

    return ManifestDataModule(ManifestConfig(**_fields(ManifestConfig, cfg)), modality, model.preprocessors[modality],
                              model.anchor, partner=partner, augment=augment)


def _llvip(cfg: Any, model: Any, modality: Modality, partner: str, augment: Callable) -> Any:
    from binder_datasets.llvip import LLVIPConfig, LLVIPDataModule

    return LLVIPDataModule(LLVIPConfig(**_fields(LLVIPConfig, cfg)), modality, model.preprocessors[modality],
                           model.anchor, partner=partner, augment=augment)


DATA_KINDS: Dict[str, Callable] = {"digits": _digits, "manifest": _manifest, "llvip": _llvip}


def build_datamodule(cfg: Any, model: Any, modality: Modality, partner: str = "image") -> Any:
    """The DataModule for ``cfg.kind`` with the modality's preprocessor and train augmentation."""
    kind = cfg.get("kind")
    if kind not in DATA_KINDS:
        raise BinderInputError(f"data.kind must be one of {sorted(DATA_KINDS)}, got {kind!r}")
    spec = get_modality(modality)
    augment = spec.augment_cls(model.configs[modality]) if spec.augment_cls and cfg.get("augment", True) else None
    return DATA_KINDS[kind](cfg, model, modality, partner, augment)
