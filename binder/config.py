"""Configs: dataclass schemas for Hydra, preset overrides, and checked ``_target_`` instantiation.

binder's Hydra configs (lightning-hydra-template's groups: ``modality/ anchor/ data/ trainer/
callbacks/ logger/ experiment/``) are backed by dataclass schemas (:data:`SCHEMAS`, each registered
by the module that defines it; the training app stores them in Hydra's ConfigStore), so a YAML
file lists only what it sets and an unknown or mistyped key is an error naming the key and its
group. Every bound modality's config dataclass is its schema (``schema/modality/<name>``); plugins'
YAML files are stored from the registry, so ``python train.py modality=<plugin>`` composes without
binder knowing the plugin. Objects that take a config node (anchors, data modules, callbacks,
loggers, the trainer) are built from ``_target_`` by :func:`instantiate`, which checks the node's
keys against the target first.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any, Dict, Mapping, Optional, Type, TypeVar

from binder.errors import BinderConfigError
from binder.extension import Registry

log = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA_GROUP = "schema"


def to_dict(node: Any) -> Dict[str, Any]:
    """A Hydra/OmegaConf node, dataclass or mapping -> plain, resolved dict."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True, structured_config_mode=_dict_mode())
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return dataclasses.asdict(node)
    return dict(node)


def _dict_mode() -> Any:
    from omegaconf import SCMode

    return SCMode.DICT


def _message(err: Exception) -> str:
    """OmegaConf's first line plus its ``full_key`` line, if any."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    key = next((ln for ln in lines if ln.startswith("full_key:")), "")
    return lines[0] + (f" ({key})" if key and key not in lines[0] else "") if lines else type(err).__name__


def build_dataclass(cls: Type[T], values: Any, where: str) -> T:
    """Validate ``values`` (a mapping or node) against dataclass ``cls`` and build it.

    Nested dataclasses are built too; strings that should be numbers are converted or refused.

    Raises:
        BinderConfigError: an unknown key or a value of the wrong type, naming it and ``where``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping) and not hasattr(values, "items"):
        raise BinderConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(values).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), dict(values) if isinstance(values, Mapping) else values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        raise BinderConfigError(f"{where}: {_message(err)}; {cls.__name__} has fields: {fields}") from None


def merge_overrides(base: T, overrides: Any, where: str) -> T:
    """``base`` (a preset dataclass) with the non-null fields of ``overrides`` applied.

    Raises:
        BinderConfigError: ``overrides`` has a field ``base`` does not.
    """
    values = overrides if isinstance(overrides, Mapping) else to_dict(overrides) if overrides is not None else {}
    set_values = {k: v for k, v in values.items() if v is not None}
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(set_values) - known)
    if unknown:
        raise BinderConfigError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    return dataclasses.replace(base, **set_values)


# ----------------------------------------------------------------------------------------------
# `_target_` instantiation with key checks
# ----------------------------------------------------------------------------------------------

def accepted_keys(target: Any) -> Optional[set]:
    """Keyword arguments ``target`` accepts (None: any, it takes ``**kwargs`` without a Config)."""
    config_cls = getattr(target, "Config", None)
    if config_cls is not None and dataclasses.is_dataclass(config_cls):
        return {f.name for f in dataclasses.fields(config_cls)}
    fn = target.__init__ if inspect.isclass(target) else target
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


def check_keys(node: Any, group: str, allowed_extra: tuple = ()) -> Any:
    """The callable named by ``node._target_`` after checking every key of ``node`` against it.

    Raises:
        BinderConfigError: no ``_target_``, a target that does not import, or an unknown key.
    """
    from hydra.utils import get_method

    values = to_dict(node)
    path = values.get("_target_")
    if not path:
        raise BinderConfigError(f"config group {group!r} needs a _target_ (the class to build), got keys "
                                f"{sorted(values)}")
    try:
        target = get_method(path)
    except Exception as err:
        raise BinderConfigError(f"{group}._target_={path!r} cannot be imported: {_message(err)}") from None
    accepted = accepted_keys(target)
    keys = {k for k in values if not k.startswith("_")} - set(allowed_extra)
    if accepted is not None and keys - accepted:
        unknown = sorted(keys - accepted)
        raise BinderConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
                                f"config group {group!r} ({path}); accepted: {', '.join(sorted(accepted))}")
    return target


def instantiate(node: Any, group: str, **kwargs: Any) -> Any:
    """Build ``node._target_`` with the node's keys plus ``kwargs`` (objects passed as they are),
    after :func:`check_keys`."""
    from hydra.utils import instantiate as hydra_instantiate

    check_keys(node, group, allowed_extra=tuple(kwargs))
    factory = hydra_instantiate(node, _partial_=True, _convert_="all")
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise BinderConfigError(f"config group {group!r}: {err}") from err


# ----------------------------------------------------------------------------------------------
# Schemas of the config groups
# ----------------------------------------------------------------------------------------------

SCHEMAS: Registry = Registry("config schema", group="binder.config_schemas", error=BinderConfigError)
"""``"group/name"`` -> the dataclass that is the schema of that option of a config group
(``"data/digits"`` -> :class:`binder.datasets.digits.DigitsConfig`). Each module registers its
own; the training app stores them in Hydra's ConfigStore under ``schema/<group>/<name>``."""
