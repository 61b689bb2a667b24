"""The embedding API of a model: ``model.embed(audio=[...], image=[...], text=[...])``.

Inputs are raw (file paths, waveforms with their sample rate, PIL images, strings); each
modality's preprocessor (or the anchor's transform/tokenizer) turns them into model tensors,
which are embedded in batches without gradients on the model's own device (or the one given).
Every embedding that leaves binder is finite and unit-norm; an input that would give anything
else is a :class:`~binder.errors.BinderInputError` naming it.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch

from binder.errors import BinderInputError
from binder.logs import progress as progress_bar
from binder.types import IMAGE, TEXT, modality_name

log = logging.getLogger(__name__)

def _is_pair(value: Any) -> bool:
    """``(samples, rate)``: one input with its int or float rate (e.g. (waveform, 16000))."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], numbers.Real)
            and not isinstance(value[1], bool))


def as_items(value: Any, modality: str = "") -> List[Any]:
    """A list (tuple, generator, numpy array of strings) of inputs, or one input -> list."""
    if isinstance(value, list):
        return value
    if _is_pair(value):
        return [value]
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "USO" and modality == TEXT:
        return [str(v) if value.dtype.kind in "US" else v for v in value.reshape(-1)]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, np.ndarray, torch.Tensor)) and \
            not hasattr(value, "read") and not hasattr(value, "__fspath__") and not hasattr(value, "getpixel"):
        return list(value)
    return [value]


def check_batch_size(batch_size: Any) -> int:
    """A positive integer batch size, or a clear error."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise BinderInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def check_finite(z: torch.Tensor, modality: str, start: int) -> None:
    """Refuse non-finite embeddings, naming the inputs (by index) that produced them."""
    bad = (~torch.isfinite(z)).any(-1)
    if bad.any():
        idx = [start + int(i) for i in torch.nonzero(bad).flatten()[:5]]
        raise BinderInputError(f"{modality} input(s) {idx} give non-finite embeddings (values too large or "
                               "degenerate after preprocessing); check those inputs")


class EmbedMixin:
    """Adds :meth:`embed` to a model that has ``encode``, ``anchor`` and ``preprocessors``."""

    def preprocess(self, modality: str, items: List[Any], sample_rate: Optional[float] = None) -> torch.Tensor:
        """Raw inputs of one modality -> one stacked model tensor."""
        if modality == TEXT:
            return self.anchor.tokenize(items)
        pre = self.item_preprocessor(modality)
        return torch.stack([pre(x, sample_rate=sample_rate) for x in items])

    def _missing(self, modality: str) -> BinderInputError:
        return BinderInputError(f"this model has no {modality} encoder; it embeds {self.modalities}")

    def item_preprocessor(self, modality: str) -> Callable[..., torch.Tensor]:
        """The function from one raw input of ``modality`` to its model tensor."""
        if modality == IMAGE:
            return lambda image, **_: self.anchor.preprocess_image(image)
        if modality == TEXT:
            return lambda text, **_: self.anchor.tokenize([text])[0]
        if modality not in self.preprocessors:
            raise self._missing(modality)
        return self.preprocessors[modality]

    def _target_device(self, device: "str | torch.device | None") -> torch.device:
        if device is None:
            return self.device
        device = torch.device(device)
        if device != self.device:
            self.to(device)
        return device

    @torch.no_grad()
    def embed(self, batch_size: int = 32, device: "str | torch.device | None" = None,
              sample_rate: Optional[float] = None, progress: bool = True, **inputs: Any) -> Dict[str, torch.Tensor]:
        """Embed raw inputs given per modality: ``model.embed(audio=[...], text=[...])``.

        Args:
            batch_size: Inputs per forward pass (a positive integer).
            device: Where to run; moves the model there. Default: where the model already is.
            sample_rate: Sample rate of waveforms (or frame rate of frame arrays) given without one.
            progress: Show a progress bar for long inputs.
            **inputs: ``modality=`` a list (or tuple, generator) of inputs, or a single input.

        Returns:
            ``{modality name: (N, D) float32 L2-normalised tensor on the CPU}``.
        """
        if not inputs:
            raise BinderInputError("embed() needs inputs, e.g. embed(audio=['a.wav'], text=['a dog'])")
        batch_size = check_batch_size(batch_size)
        device = self._target_device(device)
        was_training = self.training
        self.eval()
        try:
            return {modality_name(name): self._embed_one(modality_name(name), value, batch_size, device,
                                                         sample_rate, progress) for name, value in inputs.items()}
        finally:
            self.train(was_training)

    def _embed_one(self, modality: str, value: Any, batch_size: int, device: torch.device,
                   sample_rate: Optional[float], progress: bool) -> torch.Tensor:
        if modality not in self.modalities:
            raise self._missing(modality)
        items = as_items(value, modality)
        if not items:
            raise BinderInputError(f"embed(): no {modality} inputs given (an empty list)")
        chunks = range(0, len(items), batch_size)
        bar = progress_bar(chunks, f"embed {modality}", enabled=progress and len(chunks) >= 4)
        parts = []
        for start in bar:
            x = self.preprocess(modality, items[start : start + batch_size], sample_rate).to(device)
            z = self.encode(modality, x).float().cpu()
            check_finite(z, modality, start)
            parts.append(z)
        return torch.cat(parts)
