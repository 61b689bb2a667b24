"""Core types shared across binder: the :class:`Modality` enum and small aliases.

Modalities follow ImageBind (Girdhar et al., CVPR 2023, arXiv 2305.05665): image and text are
served by the frozen anchor, every other modality is bound to the anchor's image space.
"""
from __future__ import annotations

from enum import Enum
from typing import Dict, Mapping

import torch

from binder.errors import BinderInputError


class Modality(str, Enum):
    """Every modality binder knows by name. Values are the lower-case strings used in configs."""

    IMAGE = "image"
    TEXT = "text"
    AUDIO = "audio"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"
    VIDEO = "video"

    __hash__ = str.__hash__  # so d["audio"] finds d[Modality.AUDIO]

    def __str__(self) -> str:  # so f-strings and log keys read "audio", not "Modality.AUDIO"
        return self.value

    @classmethod
    def parse(cls, name: "str | Modality") -> "Modality":
        """Return the member for ``name``; raise a clear error for unknown names."""
        if isinstance(name, Modality):
            return name
        try:
            return cls(str(name).lower())
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise BinderInputError(f"unknown modality {name!r}; expected one of: {known}") from None


ANCHOR_MODALITIES = (Modality.IMAGE, Modality.TEXT)
"""Modalities encoded by the frozen anchor rather than a trained encoder."""

TensorDict = Dict[Modality, torch.Tensor]
"""A batch, model output or loss input keyed by modality."""


def as_modality_dict(data: Mapping) -> dict:
    """Re-key a mapping whose keys are modality names (strings or enums) by :class:`Modality`."""
    return {Modality.parse(k): v for k, v in data.items()}
