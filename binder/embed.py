"""The embedding API: ``model.embed(audio=[...], image=[...], text=[...])`` and ``binder.embed``.

Inputs are raw (file paths, waveforms with their sample rate, PIL images, strings); each
modality's preprocessor (or the anchor's transform/tokenizer) turns them into model tensors,
which are embedded in batches without gradients on the best available device.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any, Dict, List, Optional

import torch
from tqdm.auto import tqdm

from binder.errors import BinderInputError, NoDefaultModelError
from binder.types import Modality

log = logging.getLogger(__name__)

_default_model = None


def best_device() -> torch.device:
    """CUDA if present, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def as_items(value: Any) -> List[Any]:
    """A list of inputs, or one input (a path, string, image, array, or (samples, rate) with an int or
    float rate, e.g. (waveform, 16000) or (frames, 29.97)) -> list."""
    if isinstance(value, list):
        return value
    is_pair = len(value) == 2 and isinstance(value[1], numbers.Real) and not isinstance(value[1], bool) if isinstance(value, tuple) else False
    if isinstance(value, tuple) and not is_pair:  # (samples, rate) is one input; other tuples are lists
        return list(value)
    return [value]


class EmbedMixin:
    """Adds :meth:`embed` to a model that has ``encode``, ``anchor`` and ``preprocessors``."""

    def preprocess(self, modality: Modality, items: List[Any], sample_rate: Optional[int] = None) -> torch.Tensor:
        """Raw inputs of one modality -> one stacked model tensor."""
        if modality is Modality.TEXT:
            return self.anchor.tokenize(items)
        if modality is Modality.IMAGE:
            return torch.stack([self.anchor.preprocess_image(x) for x in items])
        if modality not in self.preprocessors:
            names = [m.value for m in self.modalities]
            raise BinderInputError(f"this model has no {modality.value} encoder; it embeds {names}")
        pre = self.preprocessors[modality]
        return torch.stack([pre(x, sample_rate=sample_rate) for x in items])

    @torch.no_grad()
    def embed(self, batch_size: int = 32, device: "str | torch.device | None" = None,
              sample_rate: Optional[int] = None, progress: bool = True, **inputs: Any) -> Dict[Modality, torch.Tensor]:
        """Embed raw inputs given per modality.

        Args:
            batch_size: Inputs per forward pass.
            device: Where to run; default: :func:`best_device`.
            sample_rate: Sample rate of waveforms passed without one.
            progress: Show a progress bar for long inputs.
            **inputs: ``modality=list of inputs`` (or a single input).

        Returns:
            ``{modality: (N, D) float32 L2-normalised tensor on the CPU}``; keys compare equal to
            the modality names, so ``out["audio"]`` works.
        """
        if not inputs:
            raise BinderInputError("embed() needs inputs, e.g. embed(audio=['a.wav'], text=['a dog'])")
        device = torch.device(device) if device is not None else best_device()
        self.to(device).eval()
        out: Dict[Modality, torch.Tensor] = {}
        for name, value in inputs.items():
            modality = Modality.parse(name)
            items = as_items(value)
            if not items:
                raise BinderInputError(f"embed(): no {modality.value} inputs given")
            chunks = range(0, len(items), batch_size)
            bar = tqdm(chunks, desc=f"embed {modality.value}", disable=not progress or len(chunks) < 4, leave=False)
            parts = []
            for start in bar:
                x = self.preprocess(modality, items[start : start + batch_size], sample_rate).to(device)
                parts.append(self.encode(modality, x).float().cpu())
            out[modality] = torch.cat(parts)
        return out


def use(model: Any) -> Any:
    """Set the default model of :func:`embed`: a model, or a directory for :func:`binder.load`."""
    global _default_model
    if not isinstance(model, torch.nn.Module):
        from binder.io import load

        model = load(model)
    _default_model = model
    return model


def embed(**inputs: Any) -> Dict[Modality, torch.Tensor]:
    """Embed with the default model set by :func:`use` (see :meth:`EmbedMixin.embed`)."""
    if _default_model is None:
        raise NoDefaultModelError(
            "binder.embed() has no default model: call binder.use('path/to/model') first "
            "(a folder written by binder.save, e.g. a training run's outputs/.../model)"
        )
    return _default_model.embed(**inputs)
