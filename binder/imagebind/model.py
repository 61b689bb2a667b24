"""ImageBindModel: a BindModel whose bound encoders are ImageBind's own trunks.

Same interface as :class:`~binder.model.BindModel` (``forward``, ``encode``, ``embed``,
``temperature``, saving and fine-tuning): audio, depth, thermal and IMU are
:class:`~binder.imagebind.layers.ImageBindTrunk` encoders with BindModel's bias-free heads,
preprocessed by binder's registered modality preprocessors with their ``imagebind`` preset;
image and text come from :class:`~binder.imagebind.anchor.ImageBindAnchor`; video goes through
the anchor's vision tower (clips averaged), as in the reference code (arXiv 2305.05665).
Modalities added later (``add_modality`` without a trunk) get their registered encoders.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional

import torch
from einops import rearrange
from torch import nn

from binder.errors import BinderInputError
from binder.imagebind.layers import ImageBindTrunk, TrunkConfig
from binder.model import BindModel, build_config
from binder.registry import get_modality
from binder.types import Modality

log = logging.getLogger(__name__)

ARCHITECTURE = "imagebind"


class ImageBindModel(BindModel):
    """ImageBind's anchor and trunks behind binder's model interface.

    Args:
        anchor: An :class:`~binder.imagebind.anchor.ImageBindAnchor`.
        configs: ``{modality: config}`` of every bound modality (preprocessing, temperature).
        trunks: ``{modality: TrunkConfig or dict}`` for those encoded by an ImageBind trunk.
    """

    def __init__(self, anchor: Any, configs: Mapping[Any, Any], trunks: Optional[Mapping[Any, Any]] = None) -> None:
        super().__init__(anchor, {})
        self.trunk_configs: Dict[Modality, TrunkConfig] = {}
        trunks = {Modality.parse(m): t for m, t in (trunks or {}).items()}
        for name, cfg in configs.items():
            modality = Modality.parse(name)
            self.add_modality(modality, cfg, trunks.get(modality))

    def add_modality(self, modality: Modality, cfg: Any, trunk: "TrunkConfig | Mapping | None" = None) -> None:
        """Bind ``modality``: with ``trunk``, an ImageBind trunk; else its registered encoder."""
        if trunk is None:
            return super().add_modality(modality, cfg)
        spec = get_modality(modality)
        if not isinstance(cfg, spec.config_cls):
            cfg = build_config(modality, cfg)
        if not isinstance(trunk, TrunkConfig):
            trunk = TrunkConfig.from_dict(dict(trunk))
        encoder = ImageBindTrunk(trunk)
        self.configs[modality] = cfg
        self.preprocessors[modality] = spec.preprocessor_cls(cfg)
        self.encoders[modality.value] = encoder
        self.heads[modality.value] = nn.Linear(encoder.output_dim, self.anchor.embed_dim, bias=False)
        self.trunk_configs[modality] = trunk

    def config_extra(self) -> Dict[str, Any]:
        """What config.json needs beyond BindModel's: which encoders are ImageBind trunks."""
        return {"architecture": ARCHITECTURE,
                "trunks": {m.value: t.to_dict() for m, t in self.trunk_configs.items()}}

    @classmethod
    def from_config(cls, anchor: Any, config: Mapping[str, Any]) -> "ImageBindModel":
        """Rebuild from the dict :func:`binder.io.model_config` wrote (weights not loaded)."""
        return cls(anchor, config["modalities"], config.get("trunks", {}))

    def logit_scale(self, modality: "Modality | str") -> Optional[float]:
        """ImageBind's post-normalisation logit scale of ``modality`` (None where it has none)."""
        modality = Modality.parse(modality)
        if modality is Modality.TEXT:
            return self.anchor.logit_scale
        encoder = self.encoders[modality.value] if modality in self.configs else None
        return getattr(encoder, "logit_scale", None)

    # ----- video: the anchor's vision tower, unless a video encoder was bound ---------------

    @property
    def video_via_anchor(self) -> bool:
        """True when video is embedded by the anchor's vision tower (ImageBind's route)."""
        return Modality.VIDEO not in self.configs and hasattr(self.anchor, "encode_video")

    @property
    def modalities(self) -> List[Modality]:
        extra = [Modality.VIDEO] if self.video_via_anchor else []
        return [*super().modalities, *extra]

    def encode(self, modality: "Modality | str", x: torch.Tensor) -> torch.Tensor:
        """Embed one preprocessed batch -> L2-normalised (N, D); video (N, clips, 3, 2, H, W)."""
        modality = Modality.parse(modality)
        if modality is Modality.VIDEO and self.video_via_anchor:
            if x.ndim != 6:
                raise BinderInputError(f"video tensor must be (N, clips, frames, 3, H, W) (binder's video layout) or "
                                       f"(N, clips, 3, frames, H, W) (ImageBind's), got shape {tuple(x.shape)}")
            if x.shape[3] == 3:  # binder's (N, K, T, 3, H, W) -> ImageBind's (N, K, 3, T, H, W)
                x = rearrange(x, "n k t c h w -> n k c t h w")
            return self.anchor.encode_video(x)
        return super().encode(modality, x)

    def preprocess(self, modality: Modality, items: List[Any], sample_rate: Optional[int] = None) -> torch.Tensor:
        if modality is Modality.VIDEO and self.video_via_anchor and modality not in self.preprocessors:
            self.preprocessors[modality] = video_preprocessor(self.anchor)
        return super().preprocess(modality, items, sample_rate)


def video_preprocessor(anchor: Any) -> Any:
    """The registered video preprocessor set up as ImageBind's loader (clips of 2 frames at the
    anchor's image size and normalisation, 3 spatial crops) -> (clips * 3, frames, 3, H, W)."""
    try:
        spec = get_modality(Modality.VIDEO)
    except BinderInputError as err:
        raise BinderInputError(f"raw video needs binder's video modality module: {err}") from err
    fields = spec.config_cls.__dataclass_fields__
    # imagebind/data.py's video loader: 5 clips of 2 s, 2 frames each, ShortSideScale(224)
    # (bilinear), 3 spatial crops -> 15 views averaged.
    official = {"preset": "imagebind", "clips_per_sample": 5, "frames_per_clip": 2, "clip_duration": 2.0,
                "spatial_crops": 3, "interpolation": "bilinear"}
    pre = spec.preprocessor_cls(spec.config_cls(**{k: v for k, v in official.items() if k in fields}))
    if hasattr(pre, "attach_anchor"):
        pre.attach_anchor(anchor)
    return pre
