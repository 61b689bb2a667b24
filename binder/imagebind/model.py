"""ImageBindModel: a BindModel whose anchor is ImageBind's own vision and text towers.

Same interface as :class:`~binder.model.BindModel` (``forward``, ``encode``, ``embed``,
``temperature``, saving and fine-tuning). Audio, depth, thermal and IMU are binder's registered
encoders with their ``imagebind`` preset, which have exactly the module structure of ImageBind's
trunks (:class:`binder.layers.Trunk`), so the official weights load into them key for key;
image and text come from :class:`~binder.imagebind.anchor.ImageBindAnchor`; video goes through
the anchor's vision tower (clips averaged), as in the reference code (arXiv 2305.05665), unless
a video encoder is bound.
"""
from __future__ import annotations

import logging
from typing import Any, List, Optional

import torch
from einops import rearrange

from binder.errors import BinderInputError
from binder.factory import ARCHITECTURES
from binder.model import BindModel
from binder.registry import get_modality
from binder.types import TEXT, modality_name

log = logging.getLogger(__name__)

VIDEO = "video"


class ImageBindModel(BindModel):
    """ImageBind's anchor with binder's encoders behind binder's model interface."""

    architecture = "imagebind"

    def logit_scale(self, modality: str) -> Optional[float]:
        """ImageBind's post-normalisation logit scale of ``modality`` (None where it has none)."""
        modality = modality_name(modality)
        if modality == TEXT:
            return self.anchor.logit_scale
        encoder = self.encoders[modality] if modality in self.configs else None
        return getattr(encoder, "logit_scale", None)

    # ----- video: the anchor's vision tower, unless a video encoder was bound ---------------

    @property
    def video_via_anchor(self) -> bool:
        """True when video is embedded by the anchor's vision tower (ImageBind's route)."""
        return VIDEO not in self.configs and hasattr(self.anchor, "encode_video")

    @property
    def modalities(self) -> List[str]:
        extra = [VIDEO] if self.video_via_anchor else []
        return [*super().modalities, *extra]

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Embed one preprocessed batch -> L2-normalised (N, D); video (N, clips, 3, 2, H, W)."""
        modality = modality_name(modality)
        if modality == VIDEO and self.video_via_anchor:
            if x.ndim != 6:
                raise BinderInputError(f"video tensor must be (N, clips, frames, 3, H, W) (binder's video layout) or "
                                       f"(N, clips, 3, frames, H, W) (ImageBind's), got shape {tuple(x.shape)}")
            if x.shape[3] == 3:  # binder's (N, K, T, 3, H, W) -> ImageBind's (N, K, 3, T, H, W)
                x = rearrange(x, "n k t c h w -> n k c t h w")
            return self.anchor.encode_video(x)
        return super().encode(modality, x)

    def item_preprocessor(self, modality: str) -> Any:
        if modality == VIDEO and self.video_via_anchor and modality not in self.preprocessors:
            self.preprocessors[modality] = video_preprocessor(self.anchor)
        return super().item_preprocessor(modality)


def video_preprocessor(anchor: Any) -> Any:
    """The registered video preprocessor set up as ImageBind's loader (clips of 2 frames at the
    anchor's image size and normalisation, 3 spatial crops) -> (clips * 3, frames, 3, H, W)."""
    try:
        spec = get_modality(VIDEO)
    except BinderInputError as err:
        raise BinderInputError(f"raw video needs binder's video modality module: {err}") from err
    # imagebind/data.py's video loader: 5 clips of 2 s (pytorchvideo's constant clips sampler),
    # 2 frames each, ShortSideScale(224) (bilinear), 3 spatial crops -> 15 views averaged.
    official = {"preset": "imagebind", "clips_per_sample": 5, "frames_per_clip": 2, "clip_duration": 2.0,
                "clip_policy": "imagebind", "spatial_crops": 3, "interpolation": "bilinear"}
    pre = spec.preprocessor_cls(spec.config_cls(**official))
    if hasattr(pre, "attach_anchor"):
        pre.attach_anchor(anchor)
    return pre


ARCHITECTURES.register(ImageBindModel.architecture, ImageBindModel)
