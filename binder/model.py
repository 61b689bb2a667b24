"""BindModel: per-modality encoders bound to a frozen anchor (ImageBind, arXiv 2305.05665).

Each bound modality is ``encoder -> linear head (bias-free) to the anchor's width -> L2
normalise``; multi-clip inputs (B, K, ...) are embedded clip by clip and averaged, then
re-normalised (ImageBind averages clip embeddings likewise). Image and text go through the
frozen anchor. ``forward`` maps ``{modality: preprocessed tensor}`` to ``{modality: (N, D)}``.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from binder.anchor import Anchor
from binder.embed import EmbedMixin
from binder.errors import BinderInputError
from binder.registry import get_modality
from binder.types import ANCHOR_MODALITIES, Modality, TensorDict


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """A modality config dataclass (possibly nested) -> plain JSON-able dict."""
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def build_config(modality: Modality, values: Mapping[str, Any]) -> Any:
    """Instantiate the registered config dataclass of ``modality`` from plain values."""
    cls = get_modality(modality).config_cls
    fields = cls.__dataclass_fields__
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise BinderInputError(f"{modality.value} config has unknown keys {unknown}; expected a subset of {sorted(fields)}")
    return cls(**dict(values))


class BindModel(EmbedMixin, nn.Module):
    """A frozen anchor plus trainable encoders for the bound modalities.

    Args:
        anchor: The frozen image/text pair.
        configs: ``{modality: config dataclass}`` for each bound (non-anchor) modality.
    """

    def __init__(self, anchor: Anchor, configs: Mapping[Modality, Any]) -> None:
        super().__init__()
        self.anchor = anchor
        self.configs: Dict[Modality, Any] = {}
        self.preprocessors: Dict[Modality, Any] = {}
        self.encoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for name, cfg in configs.items():
            self.add_modality(Modality.parse(name), cfg)

    def add_modality(self, modality: Modality, cfg: Any) -> None:
        """Build the encoder, head and preprocessor of one bound modality from its config."""
        if modality in ANCHOR_MODALITIES:
            raise BinderInputError(f"{modality.value} is served by the anchor and cannot be bound")
        spec = get_modality(modality)
        if not isinstance(cfg, spec.config_cls):
            cfg = build_config(modality, cfg)
        encoder = spec.encoder_cls(cfg)
        preprocessor = spec.preprocessor_cls(cfg)
        for part in (encoder, preprocessor):  # e.g. video reuses the frozen anchor's image tower
            if hasattr(part, "attach_anchor"):
                part.attach_anchor(self.anchor)
        self.configs[modality] = cfg
        self.preprocessors[modality] = preprocessor
        self.encoders[modality.value] = encoder
        # An encoder that already outputs anchor-space embeddings (projects_to_anchor) needs no head.
        if getattr(encoder, "projects_to_anchor", False):
            self.heads[modality.value] = nn.Identity()
        else:
            self.heads[modality.value] = nn.Linear(encoder.output_dim, self.anchor.embed_dim, bias=False)

    @property
    def modalities(self) -> list:
        """Every modality this model embeds: the anchor's and the bound ones."""
        return [*ANCHOR_MODALITIES, *self.configs]

    @property
    def bound_modalities(self) -> list:
        """Modalities with a trainable encoder."""
        return list(self.configs)

    def temperature(self, modality: Modality) -> float:
        """Fixed InfoNCE temperature of a bound modality."""
        return float(self.configs[Modality.parse(modality)].temperature)

    def encode(self, modality: "Modality | str", x: torch.Tensor) -> torch.Tensor:
        """Embed one preprocessed batch of ``modality`` -> L2-normalised (N, D)."""
        modality = Modality.parse(modality)
        if modality is Modality.IMAGE:
            return self.anchor.encode_image(x)
        if modality is Modality.TEXT:
            return self.anchor.encode_text(x)
        if modality not in self.configs:
            raise BinderInputError(
                f"this model has no {modality.value} encoder; it embeds {[m.value for m in self.modalities]}"
            )
        encoder = self.encoders[modality.value]
        clips = x.ndim == encoder.input_ndim + 1
        if x.ndim not in (encoder.input_ndim, encoder.input_ndim + 1):
            raise BinderInputError(
                f"{modality.value} tensor must have {encoder.input_ndim} dims (N, ...) or "
                f"{encoder.input_ndim + 1} (N, clips, ...), got shape {tuple(x.shape)}"
            )
        n = x.shape[0]
        if clips:
            x = rearrange(x, "n k ... -> (n k) ...")
        z = F.normalize(self.heads[modality.value](encoder(x)), dim=-1)  # (N * K, D)
        if clips:
            z = F.normalize(rearrange(z, "(n k) d -> n k d", n=n).mean(1), dim=-1)  # (N, D)
        return z

    def forward(self, inputs: Mapping[Any, torch.Tensor]) -> TensorDict:
        """``{modality: preprocessed tensor}`` -> ``{modality: (N, D) normalised embeddings}``."""
        return {Modality.parse(m): self.encode(m, x) for m, x in inputs.items()}

    def trainable_parameters(self) -> list:
        """Parameters of the bound encoders and heads (never the anchor's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("anchor.") and p.requires_grad]
