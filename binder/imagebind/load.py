"""``binder.load("imagebind_huge.pth")``: the official ImageBind checkpoint as a binder model.

The checkpoint (facebookresearch/ImageBind, arXiv 2305.05665) is recognised by its key names,
sizes are read from its tensor shapes (see :mod:`binder.imagebind.mapping`), and every key is
consumed: vision and text become the frozen :class:`ImageBindAnchor`, audio, depth, thermal and
IMU become binder's registered encoders with their ``imagebind`` preset (whose module structure
is ImageBind's trunk, so the weights load key for key with strict shape checks), sized from the
checkpoint, preprocessed with that preset and trained (when fine-tuned) at ImageBind's fixed
temperatures (Table 9: audio 0.05, depth 0.2, thermal 0.1, IMU 0.2).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from binder.errors import BinderInputError, ModelLoadError
from binder.factory import FORMATS, MODELS
from binder.hub import PretrainedFile, fetch_pretrained, register_pretrained
from binder.imagebind.anchor import ImageBindAnchor
from binder.imagebind.checkpoint import check_imagebind, read_state
from binder.imagebind.mapping import check_shapes, convert, infer_trunk
from binder.imagebind.model import ImageBindModel
from binder.layers import TrunkConfig
from binder.registry import get_modality
from binder.types import modality_name

log = logging.getLogger(__name__)

TEMPERATURES = {"audio": 0.05, "depth": 0.2, "thermal": 0.1, "imu": 0.2}  # ImageBind, Table 9


SIZE_FIELDS = ("patch", "stride", "width", "depth", "heads", "mlp_ratio")
"""What a checkpoint's shapes can change in a preset (reduced-size checkpoints load too)."""


def modality_config(modality: str, trunk: TrunkConfig) -> Optional[Any]:
    """The registered config of ``modality`` with its ``imagebind`` preset, sized as ``trunk``
    (read from the checkpoint) and at ImageBind's temperature; None (with a warning) when no
    module registers the modality."""
    try:
        spec = get_modality(modality)
    except BinderInputError as err:
        log.warning("skipping the ImageBind %s trunk: %s", modality, err)
        return None
    sizes = {k: getattr(trunk, k) for k in SIZE_FIELDS}
    sizes["patch"], sizes["stride"] = list(trunk.patch), list(trunk.stride)
    return spec.config_cls(preset="imagebind", temperature=TEMPERATURES[modality], encoder=sizes)


def load_checkpoint(path: "str | Path", device: "str | torch.device" = "cpu",
                    modalities: Optional[Sequence[str]] = None,
                    heads: Optional[Mapping[str, int]] = None, precision: str = "fp32") -> ImageBindModel:
    """Build an :class:`ImageBindModel` from the official ImageBind checkpoint.

    Args:
        path: ``imagebind_huge.pth`` (or a reduced-size checkpoint with the same key names).
        device: Where to put the model.
        modalities: Bound modalities to load (default: all in the file); the anchor always loads.
        heads: Attention heads per tower (``{"audio": 12}``) where they differ from ImageBind's.
        precision: The frozen anchor's precision: fp32, fp16 or bf16.

    Raises:
        ModelLoadError: one error naming the file and what was expected, for a missing,
            truncated or non-torch file, a checkpoint that is not ImageBind, or wrong shapes.
    """
    path = Path(path).expanduser().resolve()
    state = read_state(path)
    wanted = check_imagebind(state, path, None if modalities is None else [modality_name(m) for m in modalities])
    anchor = ImageBindAnchor(pretrained=str(path), precision=precision, state=state, heads=heads)
    configs = {m: cfg for m in wanted if (cfg := modality_config(m, infer_trunk(state, m, heads))) is not None}
    model = ImageBindModel(anchor, configs)
    mapped, _ = convert(state, list(configs))
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("anchor.")}
    check_shapes(expected, mapped, repr(str(path)))
    result = model.load_state_dict(mapped, strict=False)
    leftover = [k for k in result.missing_keys if not k.startswith("anchor.")]
    if leftover or result.unexpected_keys:
        raise ModelLoadError(f"{str(path)!r}: weights not loaded {leftover[:5]}, unexpected "
                             f"{result.unexpected_keys[:5]}")
    log.info("loaded ImageBind from %s: image, text, %s", path, list(configs))
    return model.to(device).eval()


# Meta publishes no checksum or size for the ImageBind weights: the file is trusted on first use
# (its SHA-256 is recorded in imagebind_huge.pth.sha256 and checked on every later cache hit).
register_pretrained(PretrainedFile(
    name="imagebind_huge", url="https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
    filename="imagebind_huge.pth", kind="imagebind",
    description="Official ImageBind (huge) checkpoint from Meta AI, about 4.5 GB"))


class CheckpointFormat:
    """ImageBind's official checkpoint format (a ``.pth`` state dict), recognised by its suffix;
    its key names are checked when it is read."""

    name = "imagebind"

    def recognises(self, path: Path) -> bool:
        return path.is_file() and path.suffix in (".pth", ".pt")

    def load(self, path: Path, device: "str | torch.device" = "cpu", modalities: Optional[Sequence[str]] = None,
             **unused: Any) -> ImageBindModel:
        return load_checkpoint(path, device=device, modalities=modalities)


def imagebind_huge(pretrained: bool = False, device: "str | torch.device" = "cpu",
                   modalities: Optional[Sequence[str]] = None, **unused: Any) -> ImageBindModel:
    """``binder.create_model("imagebind_huge", pretrained=True)``: the official checkpoint,
    downloaded once into binder's cache (size and checksum checked, resumable).

    Raises:
        ModelLoadError: ``pretrained=False``: ImageBind's anchor is built from the checkpoint's
            towers; for a model of ImageBind's sizes with fresh encoders use ``create_model("bind",
            anchor="ViT-H-14", modalities={"audio": {"preset": "imagebind"}})``.
    """
    if not pretrained:
        raise ModelLoadError("imagebind_huge is built from its checkpoint (pretrained=True); for ImageBind's sizes "
                             "with fresh encoders: create_model('bind', anchor='ViT-H-14', "
                             "modalities={'audio': {'preset': 'imagebind'}})")
    return load_checkpoint(fetch_pretrained("imagebind_huge"), device=device, modalities=modalities)


FORMATS.register(CheckpointFormat.name, CheckpointFormat())
MODELS.register("imagebind_huge", imagebind_huge)
