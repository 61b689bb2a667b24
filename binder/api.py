"""Functions of the public API that work with a default model: ``binder.use(model)``, then
``binder.embed(audio=[...], image=[...])`` and ``binder.compose({...}, weights=...)``, the way a
notebook uses binder. Each forwards to the model's own method (:meth:`BindModel.embed`,
:meth:`BindModel.compose`), which is what to call when several models are in play.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from binder.arithmetic import Weights
from binder.errors import NoDefaultModelError

_default_model: Any = None


def use(model: Any) -> Any:
    """Set the default model of :func:`embed` and :func:`compose`: a model, or anything
    :func:`binder.load` accepts. Returns the model."""
    global _default_model
    if not isinstance(model, torch.nn.Module):
        from binder.io import load

        model = load(model)
    _default_model = model
    return model


def default_model() -> Any:
    """The model set by :func:`use`.

    Raises:
        NoDefaultModelError: :func:`use` was not called.
    """
    if _default_model is None:
        raise NoDefaultModelError(
            "binder has no default model: call binder.use('path/to/model') first "
            "(a folder written by binder.save, e.g. a training run's outputs/.../model)")
    return _default_model


def embed(*, batch_size: int = 32, device: "str | torch.device | None" = None, sample_rate: Optional[float] = None,
          progress: bool = True, **inputs: Any) -> Dict[str, torch.Tensor]:
    """Embed raw inputs with the default model set by :func:`use`.

    ``binder.embed(audio=["dog.wav", (waveform, 44100)], image=["dog.jpg"], text=["a dog"])``

    Args:
        batch_size: Inputs per forward pass (a positive integer).
        device: Where to run; moves the model there. Default: where the model already is.
        sample_rate: Sample rate of waveforms (or frame rate of frame arrays) given without one.
        progress: Show a progress bar for long inputs.
        **inputs: ``modality=`` a list of inputs (or one input): file paths, ``(samples, rate)``,
            arrays, tensors, PIL images, strings; any modality the model embeds.

    Returns:
        ``{modality name: (N, D) float32 L2-normalised tensor on the CPU}``.

    Raises:
        NoDefaultModelError: :func:`use` was not called.
        BinderInputError: a bad input, naming it.
    """
    return default_model().embed(batch_size=batch_size, device=device, sample_rate=sample_rate, progress=progress,
                                 **inputs)


def compose(inputs: Mapping[str, Any], weights: Weights = None, *, model: Any = None, batch_size: int = 32,
            sample_rate: Optional[float] = None, enrollments: Sequence[Any] = ()) -> torch.Tensor:
    """``binder.compose({"image": img, "audio": wav}, weights=[0.5, 0.5])``: one query per row
    from raw inputs of several modalities, with the default model of :func:`use` (or ``model``).
    See :meth:`binder.BindModel.compose` (``enrollments`` included) and :mod:`binder.arithmetic`."""
    return (model or default_model()).compose(inputs, weights, batch_size=batch_size, sample_rate=sample_rate,
                                              enrollments=enrollments)
