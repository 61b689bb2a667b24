"""How the offline digits world produces each modality: one :class:`DigitsSource` per modality.

The digits world (:mod:`binder.datasets.digits`) pairs real MNIST digits with every modality it
can make: audio it *records* (FSDD's real spoken digits, :mod:`binder.datasets.fsdd`), the
others it *renders* from one MNIST instance (a depth relief, a heat signature, a pen's motion, a
moving digit: ``render_*.py``). That is test and benchmark data, not part of what a modality is,
so it is registered here, apart from :class:`binder.modality.ModalitySpec`: each renderer module
registers its modality's source, and a plugin registers its own (or declares it under the
``binder.digits_sources`` entry-point group), so ``binder train modality=<plugin>`` runs offline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from binder.errors import BinderInputError
from binder.extension import Registry


@dataclass(frozen=True)
class DigitsSource:
    """One modality's digits-world data: exactly one of

    Attributes:
        render: ``(digit (28, 28) uint8, numpy Generator) -> raw input`` rendered from an MNIST
            instance (paired with that same instance).
        recordings: ``(digits world, split) -> (raw inputs, labels)`` of real recordings (paired
            with a random MNIST image of their class).
    """

    render: Optional[Callable[..., Any]] = None
    recordings: Optional[Callable[..., Any]] = None

    def __post_init__(self) -> None:
        if (self.render is None) == (self.recordings is None):
            raise BinderInputError("a DigitsSource has exactly one of render= and recordings=")


def _check(kind: str, name: str, source: Any) -> None:
    if not isinstance(source, DigitsSource):
        raise BinderInputError(f"{kind} {name!r} must be a DigitsSource, got {source!r}")


SOURCES: Registry = Registry("digits-world source", group="binder.digits_sources", builtin=("binder.datasets",),
                             check=_check)


def digits_source(modality: str) -> Optional[DigitsSource]:
    """How the digits world makes ``modality``, or None when it cannot."""
    return SOURCES.get(modality) if modality in SOURCES else None


def digits_modalities() -> List[str]:
    """The modalities the digits world can produce."""
    return SOURCES.list()
