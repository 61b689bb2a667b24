"""Registry of bound modalities (timm-style ``register`` / ``list`` / ``get``).

A modality is a name owned by this registry (image and text belong to the anchor). Each module
in ``binder.modalities`` registers a :class:`~binder.modality.ModalitySpec` when imported (what a
modality is, and the contracts it meets: :mod:`binder.modality`). binder never names a modality
itself: built-in modules are found by scanning the ``binder.modalities`` package, third-party
packages through the ``binder.modalities`` entry-point group
(``[project.entry-points."binder.modalities"]``), so a plugin adds a modality without touching
binder (see ``examples/plugin_modality``). :data:`MODALITIES` is a
:class:`binder.extension.Registry` like every other extension point.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, List

from binder.config import build_dataclass
from binder.errors import BinderInputError
from binder.extension import Registry
from binder.modality import ModalityConfig, ModalitySpec, Ref
from binder.types import ANCHOR_MODALITIES, modality_name

__all__ = ["MODALITIES", "ModalityConfig", "ModalitySpec", "build_config", "check_modality", "config_to_dict",
           "get_modality", "list_modalities", "modality_names", "register_modality", "resolve_ref"]


def _check_spec(kind: str, name: str, spec: Any) -> None:
    if not isinstance(spec, ModalitySpec) or spec.name != name:
        raise BinderInputError(f"{kind} {name!r} must be registered as a ModalitySpec named {name!r}, got {spec!r}")


MODALITIES: Registry = Registry("modality", group="binder.modalities", builtin=("binder.modalities",),
                                check=_check_spec, replace="warn")


def resolve_ref(ref: Ref) -> Callable[..., Any]:
    """A callable from a callable or a ``"module:attribute"`` string."""
    if callable(ref):
        return ref
    module, _, attr = str(ref).partition(":")
    return getattr(importlib.import_module(module), attr)


def register_modality(spec: ModalitySpec) -> ModalitySpec:
    """Register ``spec`` under ``spec.name``; re-registering a name replaces it (with a warning
    when another module takes it over)."""
    return MODALITIES.register(spec.name, spec)


def get_modality(name: str) -> ModalitySpec:
    """The spec registered for ``name``.

    Raises:
        BinderInputError: the name is malformed, the anchor's, or not registered.
    """
    name = modality_name(name)
    if name in ANCHOR_MODALITIES and name not in MODALITIES:
        raise BinderInputError(f"{name!r} is served by the anchor, not by a registered encoder")
    try:
        return MODALITIES.get(name)
    except BinderInputError as err:
        raise BinderInputError(f"{err} (plus the anchor's image, text)") from None


def list_modalities(pattern: str = "*") -> List[str]:
    """Names of the registered (bound) modalities matching a wildcard ``pattern``."""
    return MODALITIES.list(pattern)


def modality_names() -> List[str]:
    """The registered modalities' names without importing their modules: the built-in package's
    module names and the ``binder.modalities`` entry points' names (for command-line options)."""
    import pkgutil
    from importlib.metadata import entry_points

    package = importlib.import_module("binder.modalities")
    names = {i.name for i in pkgutil.iter_modules(package.__path__) if not i.name.startswith("_")}
    names |= {ep.name for ep in entry_points(group=MODALITIES.group)}
    return sorted(names | set(MODALITIES.registered()))


def check_modality(name: Any) -> str:
    """A normalised modality name that is either the anchor's or registered."""
    name = modality_name(name)
    if name not in ANCHOR_MODALITIES:
        get_modality(name)
    return name


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """A modality config dataclass (possibly nested) -> plain JSON-able dict."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def build_config(modality: str, values: Any) -> Any:
    """The registered config dataclass of ``modality``, validated and built from plain values.

    Raises:
        BinderConfigError: an unknown key or a value of the wrong type, naming it.
    """
    spec = get_modality(modality)
    return build_dataclass(spec.config_cls, values, f"modality {spec.name!r}")
