"""Registry of trainable modalities (timm-style ``register`` / ``list`` / ``get``).

Each module in ``modalities/`` calls :func:`register_modality` at import time with its config
dataclass, preprocessor and encoder classes. binder itself never names a modality: it discovers
modules through the ``binder.modalities`` entry-point group declared in ``pyproject.toml``, so a
third-party package adds a modality the same way.
"""
from __future__ import annotations

import fnmatch
import importlib
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable, Dict, List, Optional, Type

from binder.errors import BinderInputError
from binder.types import Modality

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "binder.modalities"


@dataclass(frozen=True)
class ModalitySpec:
    """What binder needs to build one modality.

    Attributes:
        modality: Which modality this spec serves.
        config_cls: Dataclass holding preprocessing + encoder settings (mirrored by its YAML).
        preprocessor_cls: Callable ``cls(config)`` turning raw inputs into model tensors.
        encoder_cls: ``nn.Module`` class ``cls(config)`` with the binder encoder interface.
        augment_cls: Optional train-time augmentation ``cls(config)`` applied to model tensors.
    """

    modality: Modality
    config_cls: Type
    preprocessor_cls: Callable
    encoder_cls: Callable
    augment_cls: Optional[Callable] = None


_REGISTRY: Dict[Modality, ModalitySpec] = {}
_discovered = False


def register_modality(spec: ModalitySpec) -> ModalitySpec:
    """Register ``spec``; re-registering the same modality replaces it (module reloads)."""
    _REGISTRY[spec.modality] = spec
    return spec


def _discover() -> None:
    """Import every module advertised under the ``binder.modalities`` entry-point group."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as err:  # a broken plugin must not take the others down
            log.warning("could not import modality plugin %s (%s): %s", ep.name, ep.value, err)


def get_modality(name: "str | Modality") -> ModalitySpec:
    """Return the spec registered for ``name``.

    Raises:
        BinderInputError: the name is not a modality, or no module registered it.
    """
    modality = Modality.parse(name)
    _discover()
    if modality not in _REGISTRY:
        known = ", ".join(list_modalities()) or "none"
        raise BinderInputError(
            f"modality {modality.value!r} has no registered encoder; registered: {known}"
        )
    return _REGISTRY[modality]


def list_modalities(pattern: str = "*") -> List[str]:
    """Names of registered trainable modalities matching a wildcard ``pattern``."""
    _discover()
    return sorted(m.value for m in _REGISTRY if fnmatch.fnmatch(m.value, pattern))
