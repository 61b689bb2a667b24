"""Registry of bound modalities (timm-style ``register`` / ``list`` / ``get``).

A modality is a name owned by this registry (image and text belong to the anchor). Each module
in ``binder.modalities`` registers a :class:`ModalitySpec` when imported: config dataclass,
preprocessor, encoder, augmentation, an example input for the generic tests and, optionally,
how the offline digits world produces it. binder never names a modality itself: built-in modules
are found by scanning the ``binder.modalities`` package, third-party packages through the
``binder.modalities`` entry-point group (``[project.entry-points."binder.modalities"]``), so a
plugin adds a modality without touching binder (see ``examples/plugin_modality``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import logging
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from binder.errors import BinderInputError
from binder.types import ANCHOR_MODALITIES, modality_name

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "binder.modalities"
BUILTIN_PACKAGE = "binder.modalities"

Ref = Union[str, Callable[..., Any]]
"""A callable, or a ``"module:attribute"`` string imported on first use (keeps imports light)."""


@dataclass(frozen=True)
class ModalitySpec:
    """Everything binder needs to use one modality.

    Attributes:
        name: The modality name (lower-case; not ``image`` or ``text``).
        config_cls: Dataclass of preprocessing + encoder settings; its fields are the Hydra schema
            of ``modality=<name>`` and the ``modalities.<name>`` entry of a saved ``config.json``.
        preprocessor_cls: ``cls(config)`` -> callable ``(raw input, sample_rate=None, train=False,
            num_clips=None) -> (K, ...)`` model tensor.
        encoder_cls: ``cls(config)`` -> ``nn.Module`` with the encoder interface
            (``forward_features``, ``forward_head``, ``output_dim``, ``input_ndim``,
            ``set_grad_checkpointing``).
        augment_cls: Optional ``cls(config)`` -> train-time augmentation of one clip tensor.
        example_input: ``() -> raw input`` the preprocessor accepts (the generic tests use it).
        render: Optional digits-world renderer ``(digit (28, 28) uint8, numpy Generator) -> raw
            input`` for modalities rendered from an MNIST instance.
        recordings: Optional ``(digits world, split) -> (raw inputs, labels)`` for modalities the
            digits world reads from recordings (audio: the spoken digits).
        config_file: Optional YAML of the ``modality/<name>`` Hydra config, for modalities whose
            config is not among binder's packaged configs (plugins).
        extensions: File suffixes (lower-case, with the dot) that hold this modality, used when a
            folder is indexed or embedded (``binder index build``); empty: every file.
        check_query: Optional ``(raw input) -> None`` that raises :class:`BinderInputError` for an
            input that can be embedded but cannot make a meaningful query (audio: silence); run by
            every query path (``compose``, ``Index.search``, the CLI, the search page).
    """

    name: str
    config_cls: type
    preprocessor_cls: Callable[..., Any]
    encoder_cls: Callable[..., Any]
    augment_cls: Optional[Callable[..., Any]] = None
    example_input: Optional[Callable[[], Any]] = None
    render: Optional[Ref] = None
    recordings: Optional[Ref] = None
    config_file: Optional[Union[str, Path]] = None
    extensions: Tuple[str, ...] = ()
    check_query: Optional[Ref] = None

    def __post_init__(self) -> None:
        name = modality_name(self.name)
        if name in ANCHOR_MODALITIES:
            raise BinderInputError(f"{name!r} is served by the anchor and cannot be registered as a bound modality")
        object.__setattr__(self, "name", name)
        if not hasattr(self.config_cls, "__dataclass_fields__"):
            raise BinderInputError(f"modality {name!r}: config_cls must be a dataclass, got {self.config_cls!r}")

    @property
    def has_digits(self) -> bool:
        """Whether the offline digits world can produce this modality."""
        return self.render is not None or self.recordings is not None


_REGISTRY: Dict[str, ModalitySpec] = {}
_FAILED: Dict[str, str] = {}  # plugin name -> why it could not be imported
_discovered = False


def resolve_ref(ref: Ref) -> Callable[..., Any]:
    """A callable from a callable or a ``"module:attribute"`` string."""
    if callable(ref):
        return ref
    module, _, attr = str(ref).partition(":")
    return getattr(importlib.import_module(module), attr)


def register_modality(spec: ModalitySpec) -> ModalitySpec:
    """Register ``spec`` under ``spec.name``; re-registering a name replaces it (with a warning
    when another module takes it over)."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old.config_cls.__module__ != spec.config_cls.__module__:
        log.warning("modality %r registered by %s replaces the one from %s", spec.name,
                    spec.config_cls.__module__, old.config_cls.__module__)
    _REGISTRY[spec.name] = spec
    return spec


def _import_plugin(label: str, target: str) -> None:
    try:
        module, _, attr = target.partition(":")
        obj = importlib.import_module(module)
        if attr:
            obj = getattr(obj, attr)
            if isinstance(obj, ModalitySpec) and obj.name not in _REGISTRY:
                register_modality(obj)
    except Exception as err:  # a broken plugin must not take the others down
        _FAILED[label] = f"{type(err).__name__}: {err}"
        log.warning("could not import modality plugin %s (%s): %s", label, target, err)


def discover() -> None:
    """Import every built-in modality module and every ``binder.modalities`` entry point (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            _import_plugin(info.name, f"{BUILTIN_PACKAGE}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if not ep.value.startswith(BUILTIN_PACKAGE):
            _import_plugin(ep.name, ep.value)


def get_modality(name: str) -> ModalitySpec:
    """The spec registered for ``name``.

    Raises:
        BinderInputError: the name is malformed, the anchor's, or not registered.
    """
    name = modality_name(name)
    discover()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in ANCHOR_MODALITIES:
        raise BinderInputError(f"{name!r} is served by the anchor, not by a registered encoder")
    hint = f" (plugin {name!r} failed to import: {_FAILED[name]})" if name in _FAILED else ""
    known = ", ".join(list_modalities()) or "none"
    raise BinderInputError(f"unknown modality {name!r}{hint}; registered: {known} (plus the anchor's image, text)")


def list_modalities(pattern: str = "*") -> List[str]:
    """Names of the registered (bound) modalities matching a wildcard ``pattern``."""
    discover()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


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
    from binder.config import build_dataclass

    spec = get_modality(modality)
    return build_dataclass(spec.config_cls, values, f"modality {spec.name!r}")
