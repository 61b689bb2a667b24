"""BindModel: per-modality encoders bound to a frozen anchor (ImageBind, arXiv 2305.05665).

Each bound modality is ``encoder -> linear head (bias-free) to the anchor's width -> L2
normalise``; multi-clip inputs (B, K, ...) are embedded clip by clip and averaged, then
re-normalised (ImageBind averages clip embeddings likewise). Image and text go through the
frozen anchor. ``forward`` maps ``{modality: preprocessed tensor}`` to ``{modality: (N, D)}``;
modality names are plain strings owned by :mod:`binder.registry`.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from binder.anchor import Anchor, hash_tensors
from binder.embedding import EmbedMixin
from binder.errors import BinderInputError
from binder.factory import ARCHITECTURES, MODELS
from binder.io import HubMixin
from binder.modality import check_encoder
from binder.registry import build_config, check_modality, get_modality, resolve_ref
from binder.types import ANCHOR_MODALITIES, IMAGE, TEXT, TensorDict, modality_name


class BindModel(EmbedMixin, HubMixin, nn.Module):
    """A frozen anchor plus trainable encoders for the bound modalities.

    Args:
        anchor: The frozen image/text pair.
        configs: ``{modality name: config dataclass or plain dict}`` for each bound modality.
    """

    def __init__(self, anchor: Anchor, configs: Mapping[str, Any]) -> None:
        super().__init__()
        self.anchor = anchor
        self.configs: Dict[str, Any] = {}
        self.preprocessors: Dict[str, Any] = {}
        self.encoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.query_spreads: Dict[str, float] = {}  # per-modality calibration of compose (binder.arithmetic)
        for name, cfg in configs.items():
            self.add_modality(name, cfg)

    def add_modality(self, modality: str, cfg: Any) -> None:
        """Build the encoder, head and preprocessor of one bound modality from its config."""
        modality = modality_name(modality)
        if modality in ANCHOR_MODALITIES:
            raise BinderInputError(f"{modality} is served by the anchor and cannot be bound")
        spec = get_modality(modality)
        cfg = build_config(modality, cfg)
        encoder = spec.encoder_cls(cfg)
        preprocessor = spec.preprocessor_cls(cfg)
        for part in (encoder, preprocessor):  # e.g. video reuses the frozen anchor's image tower
            if hasattr(part, "attach_anchor"):
                part.attach_anchor(self.anchor)
        check_encoder(modality, encoder)
        self.configs[modality] = cfg
        self.preprocessors[modality] = preprocessor
        self.encoders[modality] = encoder
        # An encoder that already outputs anchor-space embeddings (projects_to_anchor) needs no head.
        if getattr(encoder, "projects_to_anchor", False):
            self.heads[modality] = nn.Identity()
        else:
            self.heads[modality] = nn.Linear(encoder.output_dim, self.anchor.embed_dim, bias=False)

    @property
    def modalities(self) -> List[str]:
        """Every modality this model embeds: the anchor's and the bound ones."""
        return [*ANCHOR_MODALITIES, *self.configs]

    @property
    def bound_modalities(self) -> List[str]:
        """Modalities with a trainable encoder."""
        return list(self.configs)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.anchor.parameters()).device

    def temperature(self, modality: str) -> float:
        """Fixed InfoNCE temperature of a bound modality."""
        return float(self.configs[modality_name(modality)].temperature)

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Embed one preprocessed batch of ``modality`` -> L2-normalised (N, D)."""
        modality = check_modality(modality) if modality not in self.configs else modality
        if modality == IMAGE:
            return self.anchor.encode_image(x)
        if modality == TEXT:
            return self.anchor.encode_text(x)
        if modality not in self.configs:
            raise self._missing(modality)
        encoder = self.encoders[modality]
        clips = x.ndim == encoder.input_ndim + 1
        if x.ndim not in (encoder.input_ndim, encoder.input_ndim + 1):
            raise BinderInputError(f"{modality} tensor must have {encoder.input_ndim} dims (N, ...) or "
                                   f"{encoder.input_ndim + 1} (N, clips, ...), got shape {tuple(x.shape)}")
        n = x.shape[0]
        if clips:
            x = rearrange(x, "n k ... -> (n k) ...")
        z = F.normalize(self.heads[modality](encoder(x)), dim=-1)  # (N * K, D)
        if clips:
            z = F.normalize(rearrange(z, "(n k) d -> n k d", n=n).mean(1), dim=-1)  # (N, D)
        return z

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> TensorDict:
        """``{modality: preprocessed tensor}`` -> ``{modality: (N, D) normalised embeddings}``."""
        return {modality_name(m): self.encode(modality_name(m), x) for m, x in inputs.items()}

    def fingerprint(self, modality: str) -> str:
        """SHA-256 naming the function that embeds ``modality``: the anchor's fingerprint for image
        and text, the anchor's plus the encoder's and head's tensors for a bound modality."""
        modality = modality_name(modality)
        if modality in ANCHOR_MODALITIES:
            return self.anchor.fingerprint()
        if modality not in self.configs:
            raise self._missing(modality)
        digest = hashlib.sha256(self.anchor.fingerprint().encode())
        for part in (self.encoders[modality], self.heads[modality]):
            hash_tensors(digest, part.state_dict())
        return digest.hexdigest()

    @torch.no_grad()
    def calibrate(self, images: Any, batch_size: int = 64, **inputs: Any) -> Dict[str, float]:
        """Measure how each modality's queries spread their similarities over ``images`` (raw
        images: the anchor's image space) and keep the spreads for :meth:`compose`; saved with the
        model. ``inputs``: ``modality=`` sample inputs (anything :meth:`embed` takes); image and
        text included when given. Returns ``{modality: spread}``."""
        if not inputs:
            raise BinderInputError("calibrate() needs sample inputs per modality, e.g. audio=[...], image=[...]")
        gallery = self.embed(image=images, batch_size=batch_size, progress=False)[IMAGE]
        return self.calibrate_embeddings(gallery, self.embed(batch_size=batch_size, progress=False, **inputs))

    def calibrate_embeddings(self, gallery: torch.Tensor, queries: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        """:meth:`calibrate` on embeddings: ``gallery`` (G, D) anchor image embeddings,
        ``queries`` ``{modality: (Q, D)}``. An image query set that *is* the gallery is fine: each
        image's similarity to itself is one value among G."""
        from binder.arithmetic import measure_spread

        spreads = {modality_name(m): measure_spread(z, gallery) for m, z in queries.items()}
        for m in spreads:
            if m not in self.modalities:
                raise self._missing(m)
        self.query_spreads.update(spreads)
        return spreads

    def compose(self, inputs: Mapping[str, Any], weights: Any = None, batch_size: int = 32,
                sample_rate: Optional[float] = None, enrollments: Sequence[Any] = ()) -> torch.Tensor:
        """One query from several modalities (see :mod:`binder.arithmetic`): ``{modality: inputs}``
        (anything :meth:`embed` takes; the same number per modality, or one) and contributions
        ``weights`` (a list in the order of ``inputs`` or a dict; None: equal) -> (N, D) unit queries.
        ``enrollments``: :class:`~binder.enrollment.Enrollment` s made with this model, each correcting
        its modality's embeddings before they are composed (e.g. the query's speaker)."""
        from binder.arithmetic import check_weights, compose_embeddings, warn_uncalibrated
        from binder.enrollment import check_model

        if not inputs:
            raise BinderInputError("compose() needs a query: {'image': ..., 'audio': ...}")
        names = [modality_name(m) for m in inputs]
        check_weights(weights, names)  # before any embedding work
        for m in names:
            if m not in self.modalities:
                raise self._missing(m)
        if len({e.modality for e in enrollments}) < len(enrollments):
            raise BinderInputError(f"one enrollment per modality, got {[e.modality for e in enrollments]}")
        for e in enrollments:
            check_model(e, self)
            if e.modality not in names:
                raise BinderInputError(f"an enrollment of {e.modality} was given, but the query has no {e.modality} "
                                       f"(it has {names})")
        warn_uncalibrated(self, names)
        for m, value in zip(names, inputs.values()):
            check = get_modality(m).check_query if m in self.configs else None
            for item in (value if isinstance(value, list) else [value]) if check else ():
                resolve_ref(check)(item)
        embedded = self.embed(batch_size=batch_size, sample_rate=sample_rate, progress=False,
                              **dict(zip(names, inputs.values())))
        for e in enrollments:
            embedded[e.modality] = e(embedded[e.modality])
        return compose_embeddings(embedded, weights, self.query_spreads)

    def modality_parameters(self, modality: str) -> List[nn.Parameter]:
        """Trainable parameters of one bound modality's encoder and head."""
        parts = (self.encoders[modality], self.heads[modality])
        return [p for part in parts for p in part.parameters() if p.requires_grad]

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Parameters of the bound encoders and heads (never the anchor's)."""
        return [p for name, p in self.named_parameters() if not name.startswith("anchor.") and p.requires_grad]



def create_bind(pretrained: bool = False, anchor: Any = "binder-digits", modalities: Any = ()) -> BindModel:
    """The ``bind`` model of :func:`binder.create_model`: a frozen anchor plus fresh encoders.

    Args:
        pretrained: Must be False: ``bind`` names an architecture, not published weights (train
            one with ``binder train``, or load a saved model with :func:`binder.load`).
        anchor: An :class:`~binder.anchor.Anchor`, an open_clip model name (``"ViT-H-14"``, random
            weights; ``"binder-digits"``), or an anchor description (``{"kind": "open_clip",
            "model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}``).
        modalities: Bound modalities: names (their default configs) or ``{name: config values}``.
    """
    from binder.anchor import build_anchor
    from binder.errors import ModelLoadError

    if pretrained:
        raise ModelLoadError("'bind' names an architecture, not published weights: create it with pretrained=False "
                             "and train it (binder train), or load a saved model with binder.load")
    if not isinstance(anchor, Anchor):
        anchor = build_anchor({"kind": "open_clip", "model": anchor} if isinstance(anchor, str) else dict(anchor))
    configs = dict(modalities) if isinstance(modalities, Mapping) else {m: {} for m in modalities}
    return BindModel(anchor, {name: build_config(name, values or {}) for name, values in configs.items()})


ARCHITECTURES.register("bind", BindModel)
MODELS.register("bind", create_bind)
