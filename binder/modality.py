"""What a bound modality is: its config, preprocessor and encoder contracts, and its spec.

A modality (ImageBind, arXiv 2305.05665: each modality gets its own encoder bound to the frozen
image space) is one module that registers a :class:`ModalitySpec` (:mod:`binder.registry`). The
contracts it must meet are written here as ``typing.Protocol`` s and a config base class, and
checked when the spec is made, so a plugin learns what it lacks when it is imported:

- :class:`ModalityConfig`: the base of every modality's config dataclass. It holds the fields
  all share (``preset``, ``temperature``) and their checks, once; a subclass adds its own fields,
  names its ``modality`` and its encoder ``presets``.
- :class:`Preprocessor`: ``cls(config)`` called on one raw input -> model tensor (K, ...).
- :class:`Encoder`: timm's interface, ``forward_features`` / ``forward_head`` / ``output_dim`` /
  ``set_grad_checkpointing``, plus ``input_ndim``.

How the offline digits world produces a modality (for tests and the offline benchmark) is not
part of what the modality is: see :mod:`binder.datasets.sources`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Optional, Protocol, Tuple, Union

from binder.config import build_dataclass
from binder.errors import BinderConfigError, BinderInputError
from binder.extension import missing_members
from binder.types import ANCHOR_MODALITIES, modality_name

if TYPE_CHECKING:
    import torch

Ref = Union[str, Callable[..., Any]]
"""A callable, or a ``"module:attribute"`` string imported on first use (keeps imports light)."""


@dataclass
class ModalityConfig:
    """The fields every bound modality's config has, checked once here.

    Subclass it with ``@dataclass``, set the class attributes ``modality`` (the name, for
    messages) and ``presets`` (encoder presets by name), and add the modality's own fields, each
    with a default and a trailing comment (they are the Hydra schema of ``modality=<name>``).
    Nested dataclass fields given as plain dicts are built; a subclass with checks of its own
    calls ``super().__post_init__()`` first.
    """

    modality: ClassVar[str] = ""
    presets: ClassVar[Mapping[str, Any]] = {}

    preset: str = "tiny"  # encoder size preset (one of the subclass's presets)
    temperature: float = 0.07  # fixed InfoNCE temperature of this modality's loss

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _dataclass_of(hints.get(f.name))
            if isinstance(value, dict) and kind is not None:  # direct construction with a plain dict
                setattr(self, f.name, build_dataclass(kind, value, f"{self.modality} {f.name}"))
        if self.presets and self.preset not in self.presets:
            raise BinderConfigError(f"unknown {self.modality} preset {self.preset!r}; expected one of "
                                    f"{sorted(self.presets)}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or not 0 < t <= 10:
            raise BinderConfigError(f"{self.modality} temperature must be a number in (0, 10], got {t!r}")


def _dataclass_of(hint: Any) -> Optional[type]:
    """The dataclass a field's type hint names (``X`` or ``Optional[X]``), if any."""
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


class Preprocessor(Protocol):
    """``cls(config)``; called on one raw input (a file path, ``(samples, rate)``, an array, a
    tensor, ...) -> the model tensor of its K clips (K, ...)."""

    def __call__(self, item: Any, sample_rate: Optional[float] = None, train: bool = False,
                 num_clips: Optional[int] = None) -> torch.Tensor: ...


class Encoder(Protocol):
    """``cls(config)`` -> an ``nn.Module`` with timm's encoder interface."""

    output_dim: int  # width of forward_head's output
    input_ndim: int  # dimensions of one batch of single clips, (N, ...)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


@dataclass(frozen=True)
class ModalitySpec:
    """Everything binder needs to use one modality.

    Attributes:
        name: The modality name (lower-case; not ``image`` or ``text``).
        config_cls: A :class:`ModalityConfig` dataclass of preprocessing + encoder settings; its
            fields are the Hydra schema of ``modality=<name>`` and the ``modalities.<name>`` entry
            of a saved ``config.json``.
        preprocessor_cls: ``cls(config)`` -> a :class:`Preprocessor`.
        encoder_cls: ``cls(config)`` -> an ``nn.Module`` that is an :class:`Encoder`.
        augment_cls: Optional ``cls(config)`` -> train-time augmentation of one clip tensor.
        example_input: ``() -> raw input`` the preprocessor accepts (documentation, and what the
            generic tests feed every registered modality).
        config_file: Optional YAML of the ``modality/<name>`` Hydra config, for modalities whose
            config is not among binder's packaged configs (plugins).
        extensions: File suffixes (lower-case, with the dot) that hold this modality, used when a
            folder is indexed or embedded (``binder index build``); empty: every file.
        check_query: Optional ``(raw input) -> None`` that raises :class:`BinderInputError` for an
            input that can be embedded but cannot make a meaningful query (audio: silence); run by
            every query path (``compose``, ``Index.search``, the CLI, the search page).

    Raises:
        BinderInputError: at construction, a name of the anchor's, a config that is not a
            :class:`ModalityConfig` dataclass, or an encoder lacking part of :class:`Encoder`.
    """

    name: str
    config_cls: type
    preprocessor_cls: Callable[..., Any]
    encoder_cls: Callable[..., Any]
    augment_cls: Optional[Callable[..., Any]] = None
    example_input: Optional[Callable[[], Any]] = None
    config_file: Optional[Union[str, Path]] = None
    extensions: Tuple[str, ...] = ()
    check_query: Optional[Ref] = None

    def __post_init__(self) -> None:
        name = modality_name(self.name)
        if name in ANCHOR_MODALITIES:
            raise BinderInputError(f"{name!r} is served by the anchor and cannot be registered as a bound modality")
        object.__setattr__(self, "name", name)
        config = self.config_cls
        if not (isinstance(config, type) and dataclasses.is_dataclass(config) and issubclass(config, ModalityConfig)):
            raise BinderInputError(f"modality {name!r}: config_cls must be a dataclass subclassing "
                                   "binder.modality.ModalityConfig (which holds preset and temperature), got "
                                   f"{config!r}")
        methods = [m for m in missing_members(self.encoder_cls, Encoder) if m not in ("output_dim", "input_ndim")]
        if methods:
            raise BinderInputError(f"modality {name!r}: encoder_cls {self.encoder_cls!r} does not implement "
                                   f"binder.modality.Encoder: it lacks {', '.join(methods)}")
        if not callable(self.preprocessor_cls):
            raise BinderInputError(f"modality {name!r}: preprocessor_cls must be a class or callable, got "
                                   f"{self.preprocessor_cls!r}")


def check_encoder(modality: str, encoder: Any) -> None:
    """A built encoder has the attributes of :class:`Encoder` (instances may set them in ``__init__``)."""
    missing = missing_members(encoder, Encoder)
    if missing:
        raise BinderInputError(f"the {modality} encoder {type(encoder).__name__} does not implement "
                               f"binder.modality.Encoder: it lacks {', '.join(missing)}")
