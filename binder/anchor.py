"""The frozen anchor: an image tower, a text tower, their transforms and tokenizer.

ImageBind (arXiv 2305.05665, sec. 3.2) binds every modality to a frozen OpenCLIP image/text
space. :class:`Anchor` is the interface binder relies on, and :data:`ANCHORS` the registry of
its kinds; :class:`OpenClipAnchor` serves any
open_clip model through one code path, ``open_clip.create_model_and_transforms(model,
pretrained=...)``, where ``pretrained`` is a tag (``laion2b_s34b_b79k``) or a local checkpoint,
and ``model`` may be ``local-dir:/path`` (open_clip's own folder format) or ``hf-hub:org/name``.
Another frozen pair (ImageBind's own towers) stands in by subclassing :class:`Anchor` with a
``kind``: saved models name their anchor by kind, never by an importable path, so loading a
model folder cannot be made to run arbitrary code.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from binder.config import SCHEMAS
from binder.errors import BinderInputError, ModelLoadError, existing_file, reading
from binder.extension import Registry
from binder.logs import quiet_open_clip

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"
BINDER_PREPROCESS = {"binder-digits": {"image_resize_mode": "longest"}}
"""Preprocessing of binder's own open_clip configs built by name (their folders record it)."""


def hash_tensors(digest: Any, state: Dict[str, torch.Tensor]) -> Any:
    """Feed a state dict into ``digest`` (names, shapes, dtypes and bytes, by name); return it.
    Anchor and encoder fingerprints both come from here, so they can only change together."""
    for name, value in sorted(state.items()):
        t = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest


@dataclass(frozen=True)
class ImageConfig:
    """How the anchor turns an image into a tensor (open_clip's preprocess config)."""

    size: Tuple[int, int] = (224, 224)  # (H, W) of the model input
    mean: Tuple[float, ...] = CLIP_MEAN
    std: Tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # shortest: short side + centre crop | squash | longest: fit, then pad
    fill_color: int = 0  # padding of resize_mode longest (0-255)


def register_open_clip_configs() -> None:
    """Register binder's own open_clip model configs (e.g. ``binder-digits``) with open_clip."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)


class Anchor(nn.Module):
    """A frozen image/text pair. Always in eval mode, never trainable. A kind of anchor is a
    subclass registered in :data:`ANCHORS` under its ``kind``."""

    kind: ClassVar[str] = ""
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

    def image_config(self) -> ImageConfig:
        """Input size, normalisation and resize of :meth:`preprocess_image`."""
        return ImageConfig()

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> token ids (N, L)."""
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """JSON-able description (``kind`` + settings) that :func:`build_anchor` rebuilds from."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """SHA-256 over the anchor's tensors (names, shapes, dtypes and bytes): two models share an
        embedding space exactly when their anchors have the same fingerprint."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = hash_tensors(hashlib.sha256(), self.state_dict()).hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached


def _array_image(image: Any) -> Image.Image:
    """An (H, W), (H, W, 3) or (3, H, W) uint8 array / tensor, or float in [0, 1] -> RGB PIL image."""
    import numpy as np

    from binder.imaging import as_array

    x = as_array(image, "image input") if isinstance(image, torch.Tensor) else np.asarray(image)  # keeps uint8
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)  # (C, H, W) -> (H, W, C)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != 3) or min(x.shape[:2], default=0) == 0:
        raise BinderInputError(f"image array must be (H, W), (H, W, 3) or (3, H, W) with H, W >= 1, got shape "
                               f"{x.shape}")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise BinderInputError("image array contains NaN or infinite pixels")
        if x.min() < 0 or x.max() > 1:
            raise BinderInputError(f"float image arrays must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
        x = np.round(x * 255)
    elif x.dtype != np.uint8:
        raise BinderInputError(f"image arrays must be uint8 or float in [0, 1], got dtype {x.dtype}")
    return Image.fromarray(x.astype(np.uint8)).convert("RGB")


def open_image(image: Any) -> Image.Image:
    """Return an RGB PIL image from a PIL image, a path or an array, with a clear error otherwise."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise BinderInputError(f"image input is empty ({image.width} x {image.height} pixels)")
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        path = existing_file(image, "image", "an image file")
        with reading(path, "image file", "a readable image"):
            with Image.open(path) as im:
                return im.convert("RGB")
    if isinstance(image, torch.Tensor) or type(image).__module__ == "numpy":
        return _array_image(image)
    raise BinderInputError(f"image input must be a PIL image, a file path or an array, got {type(image).__name__}")


@dataclass
class OpenClipAnchorConfig:
    """The schema of ``anchor=...`` for open_clip anchors."""

    _target_: str = "binder.anchor.OpenClipAnchor"
    model: str = "binder-digits"  # open_clip model name, "local-dir:/path/to/folder" or "hf-hub:org/name"
    pretrained: Optional[str] = None  # open_clip pretrained tag or checkpoint path; None = the folder's / random
    cache_dir: Optional[str] = None  # where open_clip caches downloaded weights
    precision: str = "fp32"  # open_clip precision string for the frozen towers
    build: Optional[Any] = None  # a recipe (with _target_) that trains the anchor when `pretrained` is missing
    cache: Optional[str] = None  # the paired images' embeddings: a cache folder, auto (built when it pays) or null


SCHEMAS.register("anchor/open_clip", OpenClipAnchorConfig)


ANCHORS: Registry = Registry("anchor kind", group="binder.anchors", builtin=("binder.imagebind.anchor",),
                             check=lambda kind, name, cls: _check_anchor(name, cls), error=ModelLoadError)


def _check_anchor(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Anchor)) or cls.kind != name:
        raise BinderInputError(f"anchor kind {name!r} must be an Anchor subclass whose kind is {name!r}, got {cls!r}")


class OpenClipAnchor(Anchor):
    """Any open_clip CLIP as a frozen anchor.

    Args:
        model: open_clip model name, ``local-dir:/folder`` or ``hf-hub:org/name``.
        pretrained: Pretrained tag or local checkpoint; None loads the folder's weights (local-dir,
            hf-hub) or leaves the towers random.
        cache_dir: open_clip's download cache.
        precision: fp32, fp16, bf16, ...
    """

    kind = "open_clip"

    def __init__(self, model: str = "binder-digits", pretrained: Optional[str] = None,
                 cache_dir: Optional[str] = None, precision: str = "fp32") -> None:
        super().__init__()
        import open_clip

        register_open_clip_configs()
        if pretrained and str(pretrained).startswith("~"):
            pretrained = os.path.expanduser(pretrained)
        if model.startswith("local-dir:~"):
            model = "local-dir:" + os.path.expanduser(model[len("local-dir:"):])
        self.settings = {"model": model, "pretrained": pretrained, "cache_dir": cache_dir, "precision": precision}
        if pretrained is None and not model.startswith(("local-dir:", "hf-hub:")):
            log.warning("anchor %s has random weights (pretrained=None)", model)
        try:
            with quiet_open_clip():
                clip, _, preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=pretrained, precision=precision, cache_dir=cache_dir,
                    **BINDER_PREPROCESS.get(model, {}))
                self.tokenizer = open_clip.get_tokenizer(model)
        except Exception as err:  # open_clip raises RuntimeError, ValueError, OSError, UnpicklingError, ...
            raise ModelLoadError(f"could not build the open_clip anchor model={model!r} pretrained={pretrained!r}: "
                                 f"{type(err).__name__}: {err}") from err
        self.model, self.preprocess = clip, preprocess
        self.embed_dim = int(self._probe_dim())
        self.freeze()

    def _probe_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
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
        return self.preprocess(open_image(image))

    def image_config(self) -> ImageConfig:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        return ImageConfig(size=size, mean=tuple(cfg.get("mean", CLIP_MEAN)), std=tuple(cfg.get("std", CLIP_STD)),
                           interpolation=cfg.get("interpolation", "bicubic"),
                           resize_mode=cfg.get("resize_mode", "shortest"), fill_color=int(cfg.get("fill_color", 0)))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            i, kind = bad[0]
            raise BinderInputError(f"text input {i} is a {kind}, expected a string")
        return self.tokenizer(texts)

    def describe(self) -> Dict[str, Any]:
        return {"kind": self.kind, **self.settings}

    def needs_bundle(self) -> bool:
        """Whether saved models must carry the weights: local files and folders, and random
        weights (which no name can recreate); a hub folder or a pretrained tag is fetched again."""
        model, pretrained = self.settings["model"], self.settings["pretrained"]
        if model.startswith("hf-hub:") and pretrained is None:
            return False
        return model.startswith("local-dir:") or pretrained is None or Path(str(pretrained)).is_file()

    def bundle(self, folder: Path) -> Optional[Dict[str, Any]]:
        """Write the anchor into ``folder`` in open_clip's folder format (``open_clip_config.json``
        + ``open_clip_model.safetensors``, loadable with ``open_clip.create_model_and_transforms(
        "local-dir:<folder>")`` without binder) and return a description pointing at it; None for
        anchors fetched by name and tag or from the Hub, which are described, not copied."""
        import open_clip
        from safetensors.torch import save_file

        if not self.needs_bundle():
            return None
        folder.mkdir(parents=True, exist_ok=True)
        name = self.settings["model"]
        model_cfg = _local_model_cfg(name) if name.startswith("local-dir:") else open_clip.get_model_config(name)
        if model_cfg is None:
            raise ModelLoadError(f"open_clip has no config for anchor model {name!r}; cannot save it in folder format")
        preprocess = {k: list(v) if isinstance(v, tuple) else v
                      for k, v in open_clip.get_model_preprocess_cfg(self.model).items()}
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess}
        (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / OPEN_CLIP_WEIGHTS))
        return {**self.describe(), "model": f"local-dir:{folder.name}", "pretrained": None}


def _local_model_cfg(model: str) -> Dict[str, Any]:
    path = Path(model[len("local-dir:"):]) / OPEN_CLIP_CONFIG
    try:
        return json.loads(path.read_text())["model_cfg"]
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"{str(path)!r} is not an open_clip folder config (model_cfg): {err}") from err


ANCHORS.register(OpenClipAnchor.kind, OpenClipAnchor)


def build_anchor(description: Dict[str, Any]) -> Anchor:
    """Rebuild an anchor from :meth:`Anchor.describe` output (``kind`` + settings).

    Raises:
        ModelLoadError: an unknown kind or settings the kind does not take.
    """
    spec = dict(description)
    kind = spec.pop("kind", spec.pop("type", "open_clip"))
    cls = ANCHORS.get(kind)
    try:
        return cls(**spec)
    except TypeError as err:
        raise ModelLoadError(f"anchor settings {sorted(spec)} do not fit the {kind!r} anchor: {err}") from err
