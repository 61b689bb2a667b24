"""Modality names: plain strings owned by the registry.

ImageBind (Girdhar et al., CVPR 2023, arXiv 2305.05665) serves image and text from a frozen
anchor and binds every other modality to the anchor's image space. In binder a modality is a
lower-case name (``"audio"``, ``"tactile"``); image and text belong to the anchor, every other
name belongs to whichever module registered it (:mod:`binder.registry`), built-in or plugin.
:class:`Modality` only offers constants for the built-in names, like timm's model names.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:
    import torch

from binder.errors import BinderInputError

IMAGE, TEXT = "image", "text"
ANCHOR_MODALITIES = (IMAGE, TEXT)
"""Modalities encoded by the frozen anchor rather than a trained encoder."""
IMAGE_EMBEDDING = "image_embedding"
"""Batch key of a pair's anchor embedding of its image, read from an anchor cache instead of
running the anchor (``binder.training.cache``)."""

NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""What a modality name looks like: lower-case letters, digits and underscores."""


class Modality:
    """Constants for the built-in modality names. Any registered name is a modality as well:
    these are conveniences, never a closed set (``"tactile"`` works wherever ``"audio"`` does)."""

    IMAGE = IMAGE
    TEXT = TEXT
    AUDIO = "audio"
    DEPTH = "depth"
    THERMAL = "thermal"
    IMU = "imu"
    VIDEO = "video"


def modality_name(name: Any) -> str:
    """Normalise a modality name (``" Audio"`` -> ``"audio"``) and check its form.

    Raises:
        BinderInputError: ``name`` is not a string of lower-case letters, digits and underscores.
    """
    if not isinstance(name, str):
        raise BinderInputError(f"a modality name must be a string such as 'audio', got {type(name).__name__} {name!r}")
    value = name.strip().lower()
    if not NAME.match(value):
        raise BinderInputError(f"{name!r} is not a modality name: expected lower-case letters, digits and "
                               "underscores, starting with a letter (e.g. 'audio', 'point_cloud')")
    return value


TensorDict = Dict[str, "torch.Tensor"]
"""A batch, model output or loss input keyed by modality name."""
