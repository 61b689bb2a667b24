"""Saving and loading binder models: safetensors weights + a JSON config.

A model folder holds ``config.json`` (the anchor's description and every bound modality's
preprocessing + encoder settings), ``model.safetensors`` (bound encoders and heads only) and,
when the anchor is a local checkpoint, ``anchor/`` with a copy of it in open_clip's own folder
format, so the folder is self-contained. Folders are written to a temporary sibling and renamed
into place, so an interrupted save never leaves a half-written model.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from binder.anchor import build_anchor
from binder.errors import BinderInputError, ModelLoadError
from binder.model import BindModel, config_to_dict
from binder.types import Modality

log = logging.getLogger(__name__)

FORMAT, VERSION = "binder", 1
CONFIG_NAME, WEIGHTS_NAME, ANCHOR_DIR = "config.json", "model.safetensors", "anchor"


def _bundle_anchor(spec: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """Copy a local anchor checkpoint into ``folder/anchor`` and point the spec at it."""
    spec = dict(spec)
    model, pretrained = str(spec.get("model", "")), spec.get("pretrained")
    if model.startswith("local-dir:"):
        shutil.copytree(model[len("local-dir:"):], folder / ANCHOR_DIR)
        spec["model"] = f"local-dir:{ANCHOR_DIR}"
    elif pretrained and Path(str(pretrained)).expanduser().is_file():
        (folder / ANCHOR_DIR).mkdir()
        src = Path(str(pretrained)).expanduser()
        shutil.copy2(src, folder / ANCHOR_DIR / src.name)
        spec["pretrained"] = f"{ANCHOR_DIR}/{src.name}"
    return spec


def _resolve_anchor(spec: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """Turn the folder-relative anchor paths written by :func:`_bundle_anchor` into absolute ones."""
    spec = dict(spec)
    model, pretrained = str(spec.get("model", "")), spec.get("pretrained")
    if model == f"local-dir:{ANCHOR_DIR}":
        spec["model"] = f"local-dir:{folder / ANCHOR_DIR}"
    if pretrained and str(pretrained).startswith(f"{ANCHOR_DIR}/"):
        spec["pretrained"] = str(folder / pretrained)
    return spec


def model_config(model: BindModel) -> Dict[str, Any]:
    """The JSON-able description :func:`load` rebuilds ``model`` from."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "embed_dim": model.anchor.embed_dim,
        "anchor": model.anchor.describe(),
        "modalities": {m.value: config_to_dict(cfg) for m, cfg in model.configs.items()},
        **(model.config_extra() if hasattr(model, "config_extra") else {}),  # e.g. ImageBind trunks
    }


def save(model: BindModel, path: "str | Path") -> Path:
    """Write ``model`` to the folder ``path`` (replaced atomically if it exists)."""
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        config = model_config(model)
        bundle = getattr(model.anchor, "bundle", None)  # an anchor that writes its own weights
        config["anchor"] = bundle(tmp / ANCHOR_DIR) if bundle else _bundle_anchor(config["anchor"], tmp)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
                 if not k.startswith("anchor.")}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved model to %s", path)
    return path


def read_config(path: Path) -> Dict[str, Any]:
    """Read and check ``config.json`` of a model folder."""
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelLoadError(f"{str(path)!r} is not a binder model folder: {CONFIG_NAME} is missing")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{str(cfg_path)!r} is not valid JSON: {err}") from err
    if config.get("format") != FORMAT or not isinstance(config.get("modalities"), dict):
        raise ModelLoadError(f"{str(cfg_path)!r} is not a binder config (expected format={FORMAT!r} and modalities)")
    return config


def _check_state(model: BindModel, state: Dict[str, torch.Tensor], where: Path) -> None:
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("anchor.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"weights in {str(where)!r} do not match config.json: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    bad = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if bad:
        raise ModelLoadError(f"weights in {str(where)!r} have the wrong shapes for config.json: {bad[:5]}")


def load(path: "str | Path", device: "str | torch.device" = "cpu") -> BindModel:
    """Rebuild a model (anchor, encoders, heads, preprocessing) from a folder written by :func:`save`.

    Raises:
        ModelLoadError: the folder, its config or its weights are missing, corrupt or mismatched.
    """
    path = Path(path).expanduser()
    if path.suffix in (".pth", ".pt") and not path.is_dir():  # the official ImageBind checkpoint
        from binder.imagebind.load import load_checkpoint

        return load_checkpoint(path, device=device)
    if not path.exists():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a file; expected a binder model folder (config.json + {WEIGHTS_NAME})")
    path = path.resolve()
    config = read_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"model folder {str(path)!r} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{str(weights)!r} is not a readable safetensors file: {err}") from err
    anchor = build_anchor(_resolve_anchor(config["anchor"], path))
    try:
        if config.get("architecture") == "imagebind":  # encoders are ImageBind trunks
            from binder.imagebind.model import ImageBindModel

            model = ImageBindModel.from_config(anchor, config)
        else:
            model = BindModel(anchor, {Modality.parse(m): c for m, c in config["modalities"].items()})
    except BinderInputError as err:
        raise ModelLoadError(f"config.json in {str(path)!r} does not describe a buildable model: {err}") from err
    _check_state(model, state, weights)
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()
