"""Reading ImageBind weights from disk and recognising the official checkpoint by its key names.

The official ``imagebind_huge.pth`` (facebookresearch/ImageBind) is a plain ``torch.save`` state
dict; it is read with ``torch.load(map_location="cpu", weights_only=True, mmap=True)``, so no
pickled code runs and tensors are paged in lazily. binder's own bundled anchor file is a
safetensors file holding the vision and text keys under their official names.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from binder.errors import ModelLoadError
from binder.imagebind.mapping import (
    ANCHOR,
    BOUND,
    GROUPS,
    convert,
    missing_keys,
    present_modalities,
)

log = logging.getLogger(__name__)

EXPECTED = ("the official ImageBind state dict (facebookresearch/ImageBind imagebind_huge.pth) with keys "
            "under modality_preprocessors., modality_trunks., modality_heads., modality_postprocessors.")


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err) or "zipfile" not in str(err):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) torch.save format


def read_state(path: "str | Path") -> Dict[str, torch.Tensor]:
    """A ``.pth``/``.pt`` torch checkpoint or a ``.safetensors`` file -> ``{name: tensor}``.

    Raises:
        ModelLoadError: the file is missing, unreadable, truncated, or holds no state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"ImageBind checkpoint {str(path)!r} does not exist; expected {EXPECTED}")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else _torch_load(path)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
        raise ModelLoadError(
            f"{str(path)!r} is not a readable checkpoint (truncated, corrupt, or not written by torch.save / "
            f"safetensors): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; expected {EXPECTED}"
        ) from err
    for wrapper in ("state_dict", "model"):  # training checkpoints sometimes nest the weights
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{str(path)!r} does not hold a state dict of tensors "
                             f"(got {type(state).__name__}); expected {EXPECTED}")
    return dict(state)


def read_heads(path: "str | Path") -> Optional[Dict[str, int]]:
    """Attention heads recorded in a bundled safetensors anchor's metadata (None elsewhere)."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        return None
    with safe_open(str(path), framework="pt") as f:
        heads = (f.metadata() or {}).get("heads")
    return {k: int(v) for k, v in json.loads(heads).items()} if heads else None


def _groups(keys: Sequence[str]) -> List[str]:
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def check_imagebind(state: Mapping[str, torch.Tensor], path: "str | Path",
                    modalities: Optional[Sequence[str]] = None) -> List[str]:
    """Recognise an ImageBind state dict; return the bound modalities to load.

    Args:
        state: Official-name state dict.
        path: The file, for messages.
        modalities: Bound modalities wanted (default: every one in the file).

    Raises:
        ModelLoadError: not ImageBind, vision/text incomplete, a wanted modality absent or
            incomplete, or keys that ImageBind's architecture does not have.
    """
    where = repr(str(path))
    if not any(k.split(".")[0] in GROUPS for k in state):
        sample = list(state)[:3]
        raise ModelLoadError(f"{where} is not an ImageBind checkpoint: expected {EXPECTED}; "
                             f"found {len(state)} keys like {sample}")
    missing = [k for m in ANCHOR for k in missing_keys(state, m)]
    if missing:
        raise ModelLoadError(f"{where} is not a complete ImageBind checkpoint: the vision/text anchor lacks key "
                             f"groups {_groups(missing)} (e.g. {missing[:3]}); expected {EXPECTED}")
    present = [m for m in present_modalities(state) if m in BOUND]
    wanted = list(present if modalities is None else modalities)
    absent = [m for m in wanted if m not in present]
    if absent:
        raise ModelLoadError(f"{where} has no ImageBind {absent} weights; it holds {present}")
    for m in wanted:
        gaps = missing_keys(state, m)
        if gaps:
            raise ModelLoadError(f"{where} has incomplete ImageBind {m} weights: missing key groups "
                                 f"{_groups(gaps)} (e.g. {gaps[:3]})")
    _, unknown = convert(state, [])
    if unknown:
        raise ModelLoadError(f"{where} has keys that ImageBind's architecture does not: {unknown[:5]}"
                             f"{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}")
    log.info("ImageBind checkpoint %s: anchor (vision, text) + %s", path, wanted)
    return wanted
