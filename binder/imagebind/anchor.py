"""ImageBind's own frozen vision and text towers as a binder :class:`~binder.anchor.Anchor`.

ImageBind (arXiv 2305.05665) anchors every modality on OpenCLIP ViT-H's image and text towers,
stored in its checkpoint under ``modality_*.vision`` / ``modality_*.text``. Preprocessing follows
the reference ``imagebind/data.py``: images resized (short side 224, bicubic), centre-cropped to
224 and normalised with CLIP's mean/std; text tokenised with CLIP's BPE (open_clip ships the
vocabulary) to 77 tokens. Videos (N, clips, 3, 2, 224, 224) go through the vision tower clip by
clip and are averaged, as the reference model does.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file
from torchvision import transforms

from binder.anchor import ANCHORS, CLIP_MEAN, CLIP_STD, Anchor, ImageConfig, open_image
from binder.errors import BinderInputError, ModelLoadError
from binder.imagebind.checkpoint import check_imagebind, read_heads, read_state
from binder.imagebind.mapping import (
    ANCHOR,
    check_shapes,
    convert,
    infer_text,
    infer_trunk,
    to_official,
)
from binder.imagebind.text import TextTower
from binder.layers import Trunk

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BUNDLE_NAME = "imagebind_anchor.safetensors"


class ImageBindAnchor(Anchor):
    """ImageBind's frozen vision (ViT-H/14, 2-frame Conv3d stem) and causal text towers.

    Args:
        pretrained: An official checkpoint (``.pth``) or a bundled anchor (``.safetensors``).
        precision: fp32, fp16 or bf16.
        model: Always ``imagebind`` (kept so saved descriptions round-trip).
        state: The official-name state dict, when the caller has already read it.
        heads: Attention heads per tower (``{"vision": 16, "text": 16}``) if not ImageBind's.
    """

    kind = "imagebind"

    def __init__(self, pretrained: Optional[str] = None, precision: str = "fp32", model: str = "imagebind", *,
                 state: Optional[Mapping[str, torch.Tensor]] = None, heads: Optional[Mapping[str, int]] = None) -> None:
        super().__init__()
        if precision not in DTYPES:
            raise ModelLoadError(f"ImageBind anchor precision must be one of {sorted(DTYPES)}, got {precision!r}")
        if state is None:
            if not pretrained:
                raise ModelLoadError("the ImageBind anchor needs pretrained=<imagebind_huge.pth or a bundled anchor>")
            state = read_state(pretrained)
            check_imagebind(state, pretrained, modalities=[])
            heads = {**(read_heads(pretrained) or {}), **(heads or {})}
        self.settings = {"model": "imagebind", "pretrained": None if pretrained is None else str(pretrained),
                         "precision": precision}
        vision_cfg, text_cfg = infer_trunk(state, "vision", heads), infer_text(state, heads)
        if vision_cfg.out_dim != text_cfg.out_dim:
            raise ModelLoadError(f"ImageBind vision and text project to different widths "
                                 f"({vision_cfg.out_dim} != {text_cfg.out_dim}) in {pretrained!r}")
        with torch.device("meta"):  # no allocation: the checkpoint's tensors are assigned below
            self.vision, self.text = Trunk(vision_cfg), TextTower(text_cfg)
        mapped, _ = convert(state, ANCHOR)
        check_shapes({f"anchor.{k}": v for k, v in self.state_dict().items()}, mapped, repr(str(pretrained)))
        self.load_state_dict({k[len("anchor."):]: v for k, v in mapped.items()}, assign=True)
        self.to(DTYPES[precision])
        self.embed_dim = int(vision_cfg.out_dim)
        self.image_size = int(vision_cfg.input_size[-1])
        self.transform = transforms.Compose([
            transforms.Resize(self.image_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ])
        self._tokenizer = None
        self.freeze()

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.cls_token.dtype

    @property
    def context_length(self) -> int:
        """Token sequence length the text tower expects."""
        return int(self.text.cfg.context_length)

    @property
    def tokenizer(self) -> Any:
        """open_clip's CLIP BPE tokenizer (the vocabulary ImageBind uses), built on first use."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) or single clips (N, 3, 2, H, W) -> L2-normalised (N, D)."""
        if images.ndim not in (4, 5):
            raise BinderInputError(f"ImageBind image input must be (N, 3, H, W) or (N, 3, T, H, W), "
                                   f"got shape {tuple(images.shape)}")
        return F.normalize(self.vision(images.to(self.dtype)).float(), dim=-1)

    @torch.no_grad()
    def encode_video(self, clips: torch.Tensor) -> torch.Tensor:
        """Videos (N, K, 3, T, H, W) (or one clip (N, 3, T, H, W)) -> clip-averaged (N, D)."""
        if clips.ndim == 5:
            return self.encode_image(clips)
        if clips.ndim != 6:
            raise BinderInputError(f"ImageBind video input must be (N, clips, 3, T, H, W), got shape "
                                   f"{tuple(clips.shape)}")
        z = self.encode_image(rearrange(clips, "n k c t h w -> (n k) c t h w"))  # (N * K, D)
        return F.normalize(rearrange(z, "(n k) d -> n k d", n=clips.shape[0]).mean(1), dim=-1)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (N, 77) -> L2-normalised (N, D)."""
        return F.normalize(self.text(tokens).float(), dim=-1)

    def preprocess_image(self, image: Any) -> torch.Tensor:
        """A PIL image or image path -> (3, 224, 224), as ImageBind's ``load_and_transform_vision_data``."""
        return self.transform(open_image(image))

    def image_config(self) -> ImageConfig:
        """224 x 224, CLIP's mean and std, bicubic short-side resize + centre crop."""
        return ImageConfig(size=(self.image_size, self.image_size), mean=CLIP_MEAN, std=CLIP_STD)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> CLIP BPE token ids (N, 77): start, text, end-of-text, zero padding."""
        texts = list(texts)
        bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise BinderInputError(f"text input {bad[0][0]} is a {bad[0][1]}, expected a string")
        return self.tokenizer(texts)

    @property
    def logit_scale(self) -> float:
        """ImageBind's learned text logit scale."""
        return self.text.logit_scale

    def heads(self) -> Dict[str, int]:
        """Attention heads of the two towers."""
        return {"vision": self.vision.cfg.heads, "text": self.text.cfg.heads}

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, **self.settings}

    def bundle(self, folder: Path) -> Dict[str, Any]:
        """Write the two towers (official names, safetensors) into ``folder``; return a spec
        whose ``pretrained`` is relative to the folder's parent (the saved model folder)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {to_official(f"anchor.{k}"): v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        n = self.context_length
        state["modality_preprocessors.text.mask"] = torch.full((n, n), float("-inf")).triu(1)
        save_file(state, str(folder / BUNDLE_NAME), metadata={"format": "imagebind", "heads": json.dumps(self.heads())})
        return {**self.describe(), "pretrained": f"{folder.name}/{BUNDLE_NAME}"}


ANCHORS.register(ImageBindAnchor.kind, ImageBindAnchor)
