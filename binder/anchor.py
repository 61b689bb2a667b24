"""The frozen anchor: an image tower, a text tower, their transforms and tokenizer.

ImageBind (arXiv 2305.05665, sec. 3.2) binds every modality to a frozen OpenCLIP image/text
space. :class:`Anchor` is the interface binder relies on; :class:`OpenClipAnchor` serves any
open_clip model through one code path, ``open_clip.create_model_and_transforms(model,
pretrained=...)``, where ``pretrained`` is a tag (``laion2b_s34b_b79k``) or a local checkpoint,
and ``model`` may be ``local-dir:/path`` (open_clip's own folder format). Another frozen pair
(e.g. ImageBind's own towers) stands in by subclassing :class:`Anchor`.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from binder.errors import BinderInputError, ModelLoadError

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


def register_open_clip_configs() -> None:
    """Register binder's own open_clip model configs (e.g. ``binder-digits``) with open_clip."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class AnchorConfig:
    """Which frozen image/text model anchors the embedding space."""

    model: str = "binder-digits"  # open_clip model name, or "local-dir:/path/to/folder"
    pretrained: Optional[str] = None  # open_clip pretrained tag or checkpoint path; None = random
    cache_dir: Optional[str] = None  # where open_clip caches downloaded weights
    precision: str = "fp32"  # open_clip precision string for the frozen towers

    def __post_init__(self) -> None:
        if self.pretrained and str(self.pretrained).startswith("~"):
            self.pretrained = os.path.expanduser(self.pretrained)
        if self.model.startswith("local-dir:~"):
            self.model = "local-dir:" + os.path.expanduser(self.model[len("local-dir:"):])


class Anchor(nn.Module):
    """A frozen image/text pair. Always in eval mode, never trainable."""

    embed_dim: int

    def freeze(self) -> "Anchor":
        """Disable gradients for every parameter and switch to eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "Anchor":
        """Ignore requests to train: a frozen anchor stays in eval mode."""
        return super().train(False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (N, 3, H, W) -> L2-normalised embeddings (N, D)."""
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) -> L2-normalised embeddings (N, D)."""
        raise NotImplementedError

    def preprocess_image(self, image: Any) -> torch.Tensor:
        """A PIL image or image path -> model tensor (3, H, W)."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> token ids (N, L)."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """JSON-able description that :func:`build_anchor` can rebuild this anchor from."""
        raise NotImplementedError


def _open_image(image: Any) -> Image.Image:
    """Return an RGB PIL image from a PIL image or a path, with a clear error otherwise."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise BinderInputError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except Exception as err:
            raise BinderInputError(f"image file {str(path)!r} is not a readable image: {err}") from err
    raise BinderInputError(f"image input must be a PIL image or a file path, got {type(image).__name__}")


class OpenClipAnchor(Anchor):
    """Any open_clip CLIP as a frozen anchor."""

    def __init__(self, cfg: AnchorConfig) -> None:
        super().__init__()
        import open_clip

        register_open_clip_configs()
        self.cfg = cfg
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=cfg.pretrained, precision=cfg.precision, cache_dir=cfg.cache_dir
            )
        except (RuntimeError, FileNotFoundError, ValueError) as err:
            raise ModelLoadError(
                f"could not build open_clip anchor model={cfg.model!r} pretrained={cfg.pretrained!r}: {err}"
            ) from err
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.embed_dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") and isinstance(
            model.text_projection, torch.Tensor) else int(self._probe_dim())
        self.freeze()

    def _probe_dim(self) -> int:
        with torch.no_grad():
            return self.model.encode_text(self.tokenize(["probe"])).shape[-1]

    @property
    def context_length(self) -> int:
        """Token sequence length the text tower expects."""
        return int(getattr(self.tokenizer, "context_length", 77))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def preprocess_image(self, image: Any) -> torch.Tensor:
        return self.preprocess(_open_image(image))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise BinderInputError("text inputs must be strings")
        return self.tokenizer(texts)

    def describe(self) -> Dict[str, Any]:
        return {"type": "open_clip", **asdict(self.cfg)}


# name -> Anchor class, or "module:Class" imported on first use (e.g. ImageBind's own towers).
ANCHOR_TYPES = {"open_clip": OpenClipAnchor, "imagebind": "binder.imagebind.anchor:ImageBindAnchor"}


def build_anchor(spec: Dict[str, Any]) -> Anchor:
    """Build an anchor from a dict such as :meth:`Anchor.describe` returns or a Hydra node.

    Keys other than ``type`` are fields of that anchor type's config dataclass.
    """
    spec = dict(spec)
    kind = spec.pop("type", "open_clip")
    if kind not in ANCHOR_TYPES:
        raise ModelLoadError(f"unknown anchor type {kind!r}; expected one of {sorted(ANCHOR_TYPES)}")
    if isinstance(ANCHOR_TYPES[kind], str):
        module, name = ANCHOR_TYPES[kind].split(":")
        ANCHOR_TYPES[kind] = getattr(importlib.import_module(module), name)
    fields = AnchorConfig.__dataclass_fields__
    return ANCHOR_TYPES[kind](AnchorConfig(**{k: v for k, v in spec.items() if k in fields}))


def list_anchor_types() -> List[str]:
    """Names of registered anchor types."""
    return sorted(ANCHOR_TYPES)
