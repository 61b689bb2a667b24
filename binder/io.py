"""Saving, loading and merging binder models: safetensors weights + a JSON config.

:func:`load` takes a model folder, a checkpoint file, a registered model name, ``hf-hub:`` or
``open_clip:`` sources and URLs, and resolves each through the registries of
:mod:`binder.factory` (names -> :data:`~binder.factory.MODELS`, files and folders -> the
:data:`~binder.factory.FORMATS` that recognises them, ``config.json``'s architecture ->
:data:`~binder.factory.ARCHITECTURES`); this module knows no model class and no checkpoint
format but its own (``binder``, registered here).

A model folder holds ``config.json`` (the anchor's description and fingerprint, every bound
modality's preprocessing + encoder settings, and the SHA-256 of every weight file),
``model.safetensors`` (bound encoders and heads only) and, when the anchor's weights are local,
``anchor/`` with the anchor in its own format (open_clip's folder format for open_clip anchors,
loadable without binder), so the folder is self-contained. Folders are written through
:func:`binder.files.atomic_folder`: an interrupted save never leaves a half-written model, and
replacing an existing one is safe at every instant.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from binder.anchor import build_anchor
from binder.errors import BinderError, BinderInputError, ModelLoadError
from binder.factory import ARCHITECTURES, FORMATS, MODELS, create_model, recognise
from binder.files import atomic_folder, file_digest, read_json_config, recover
from binder.registry import build_config, config_to_dict

log = logging.getLogger(__name__)

FORMAT, VERSION = "binder", 2
CONFIG_NAME, WEIGHTS_NAME, ANCHOR_DIR = "config.json", "model.safetensors", "anchor"


def model_config(model: Any) -> Dict[str, Any]:
    """The JSON-able description :func:`load` rebuilds ``model`` from (weights not included)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": getattr(model, "architecture", "bind"),
        "embed_dim": model.anchor.embed_dim,
        "anchor": model.anchor.describe(),
        "anchor_fingerprint": model.anchor.fingerprint(),
        "modalities": {m: config_to_dict(cfg) for m, cfg in model.configs.items()},
        "query_spreads": dict(model.query_spreads),
    }


def _relative_anchor(description: Dict[str, Any], folder: Path) -> Dict[str, Any]:
    """Anchor paths inside the model folder -> absolute, for building."""
    out = dict(description)
    model, pretrained = str(out.get("model", "")), out.get("pretrained")
    if model.startswith(f"local-dir:{ANCHOR_DIR}"):
        out["model"] = f"local-dir:{folder / model[len('local-dir:'):]}"
    if pretrained and str(pretrained).startswith(f"{ANCHOR_DIR}/"):
        out["pretrained"] = str(folder / pretrained)
    return out


def save(model: Any, path: "str | Path") -> Path:
    """Write ``model`` to the folder ``path`` (atomically replacing an existing one).

    Returns:
        The absolute path of the folder.
    """
    from binder.adapters import adapted_modalities

    adapted = adapted_modalities(model)
    if adapted:
        raise BinderInputError(f"the {'+'.join(adapted)} encoder carries LoRA adapters: save them with "
                               "binder.adapters.save_adapters, or merge them first (binder.adapters.merge_adapters)")
    path = Path(path).expanduser().absolute()
    with atomic_folder(path) as tmp:
        config = model_config(model)
        bundle = getattr(model.anchor, "bundle", None)
        bundled = bundle(tmp / ANCHOR_DIR) if bundle else None
        if bundled is not None:
            config["anchor"] = bundled
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
                 if not k.startswith("anchor.")}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        config["files"] = {str(p.relative_to(tmp)): file_digest(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    log.info("saved model to %s", path)
    return path


# ----------------------------------------------------------------------------------------------
# Loading a model folder
# ----------------------------------------------------------------------------------------------

def read_config(path: Path) -> Dict[str, Any]:
    """Read and check ``config.json`` of a model folder (every problem: one ModelLoadError)."""
    cfg_path = path / CONFIG_NAME
    config = read_json_config(path, CONFIG_NAME, "a binder model folder")
    where = repr(str(cfg_path))
    if not isinstance(config, dict):
        raise ModelLoadError(f"{where} must hold a JSON object, got a {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise ModelLoadError(f"{where} is not a binder config: key 'format' must be {FORMAT!r}, got "
                             f"{config.get('format')!r}")
    for key, kind in (("anchor", dict), ("modalities", dict)):
        if not isinstance(config.get(key), kind):
            raise ModelLoadError(f"{where}: key {key!r} must be a JSON object, got {type(config.get(key)).__name__}")
    for key, kind, name in (("version", int, "an integer"), ("architecture", str, "a string"),
                            ("anchor_fingerprint", str, "a string"), ("embed_dim", int, "an integer")):
        value = config.get(key)
        if key in config and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ModelLoadError(f"{where}: key {key!r} must be {name}, got {value!r}")
    if config.get("version", 1) > VERSION:
        raise ModelLoadError(f"{where} was written by a newer binder (format version {config['version']} > {VERSION})")
    return config


def verify_files(path: Path, config: Dict[str, Any]) -> None:
    """Check every file listed in ``config['files']`` against its recorded SHA-256."""
    files = config.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ModelLoadError(f"{str(path / CONFIG_NAME)!r}: key 'files' (file digests) is missing or not an object "
                             "of file names and SHA-256 strings")
    for name, digest in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise ModelLoadError(f"{str(path / CONFIG_NAME)!r}: file entry {name!r} points outside the model folder")
        target = path / name  # (Hub snapshots hold symlinks into a blob store: not resolved)
        if not target.is_file():
            raise ModelLoadError(f"model folder {str(path)!r} lacks {name!r}, listed in {CONFIG_NAME}")
        if file_digest(target) != digest:
            raise ModelLoadError(f"{str(target)!r} does not match the SHA-256 recorded in {CONFIG_NAME}: the file "
                                 "is corrupt or was changed after saving (load with verify=False to skip the check)")


def _configs(path: Path, config: Dict[str, Any]) -> Dict[str, Any]:
    """Validate every modality's config against its schema before anything is built."""
    out = {}
    for name, values in config["modalities"].items():
        try:
            out[name] = build_config(name, values)
        except BinderError as err:
            raise ModelLoadError(f"{str(path / CONFIG_NAME)!r}: modalities.{name}: {err}") from None
    return out


def _check_state(model: Any, state: Dict[str, torch.Tensor], where: Path) -> None:
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("anchor.")}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"weights in {str(where)!r} do not match config.json: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{'...' if len(unexpected) > 5 else ''}")
    bad = [f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if state[k].shape != v.shape]
    if bad:
        raise ModelLoadError(f"weights in {str(where)!r} have the wrong shapes for config.json: {bad[:5]}")


def load_folder(path: "str | Path", device: "str | torch.device" = "cpu", verify: bool = True, **unused: Any) -> Any:
    """Rebuild a model (anchor, encoders, heads, preprocessing) from a folder written by :func:`save`."""
    path = Path(path).expanduser()
    recover(path.absolute())
    if not path.is_dir():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist" if not path.exists() else
                             f"{str(path)!r} is a file; expected a binder model folder (config.json + {WEIGHTS_NAME})")
    path = path.resolve()
    config = read_config(path)
    if verify:
        verify_files(path, config)
    configs = _configs(path, config)
    weights = path / WEIGHTS_NAME
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{str(weights)!r} is not a readable safetensors file: {err}") from err
    try:
        anchor = build_anchor(_relative_anchor(config["anchor"], path))
        model = ARCHITECTURES.get(config.get("architecture", "bind"))(anchor, configs)
    except BinderError as err:
        raise ModelLoadError(f"config.json in {str(path)!r} does not describe a buildable model: {err}") from None
    expected = config.get("anchor_fingerprint")
    if verify and expected and anchor.fingerprint() != expected:
        raise ModelLoadError(f"the anchor built from {str(path / CONFIG_NAME)!r} ({config['anchor'].get('model')}) "
                             "is not "
                             "the one this model was trained against (anchor_fingerprint differs): its weights changed")
    _check_state(model, state, weights)
    model.load_state_dict(state, strict=False)
    model.query_spreads = _spreads(config, path)
    return model.to(device).eval()


def _spreads(config: Dict[str, Any], path: Path) -> Dict[str, float]:
    """The saved calibration of :meth:`BindModel.compose` (absent in older folders: none)."""
    spreads = config.get("query_spreads", {})
    ok = isinstance(spreads, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                           for v in spreads.values())
    if not ok:
        raise ModelLoadError(f"{str(path / CONFIG_NAME)!r}: key 'query_spreads' must map modality names to "
                             f"positive numbers, got {spreads!r}")
    return {str(k): float(v) for k, v in spreads.items()}


# ----------------------------------------------------------------------------------------------
# Any source
# ----------------------------------------------------------------------------------------------

class FolderFormat:
    """binder's own format: a folder with ``config.json`` and ``model.safetensors``."""

    name = "binder"

    def recognises(self, path: Path) -> bool:
        return path.is_dir() and (path / CONFIG_NAME).is_file()

    def load(self, path: Path, **options: Any) -> Any:
        return load_folder(path, **options)


FORMATS.register(FolderFormat.name, FolderFormat())


def _open_clip_model(source: str, pretrained: Optional[str], device: "str | torch.device") -> Any:
    name = source[len("open_clip:"):]
    if "@" in name and pretrained is None:
        name, pretrained = name.rsplit("@", 1)
    model = create_model("bind", anchor={"kind": "open_clip", "model": name, "pretrained": pretrained})
    return model.to(device).eval()


def load(source: "str | Path", device: "str | torch.device" = "cpu", *, verify: bool = True,
         revision: Optional[str] = None, pretrained: Optional[str] = None,
         modalities: Optional[Sequence[str]] = None, adapters: "Optional[str | Path]" = None,
         runtime: Optional[str] = None) -> Any:
    """Load a model from any of these sources:

    * a folder written by :func:`save` / ``save_pretrained`` (e.g. a run's ``outputs/.../model``);
    * an official ImageBind checkpoint file (``imagebind_huge.pth``), or any file or folder a
      registered format recognises (:data:`binder.factory.FORMATS`);
    * a registered model name with published weights (``"imagebind_huge"``: downloaded once into
      the cache, size and checksum checked, resumable): :func:`binder.create_model` with
      ``pretrained=True``;
    * a Hugging Face Hub repository holding a saved binder model: ``"hf-hub:org/name"``
      (optionally ``"hf-hub:org/name@revision"`` or ``revision=``);
    * an ``http(s)://`` URL of a checkpoint;
    * an open_clip model alone (image and text only): ``"open_clip:ViT-B-32@laion2b_s34b_b79k"``
      or ``"open_clip:ViT-B-32"`` with ``pretrained=`` a tag or a local checkpoint.

    Args:
        source: One of the above.
        device: Where to put the model.
        verify: Check weight files against their recorded SHA-256 (skip for very large files).
        revision: Hub revision (branch, tag or commit).
        pretrained: open_clip pretrained tag or checkpoint, for ``open_clip:`` sources.
        modalities: ImageBind checkpoints only: the bound modalities to load (default all).
        adapters: A LoRA adapter folder (``binder train ... finetune=lora`` writes ``<run>/adapters``)
            to put onto the loaded model; refused unless it was trained on this very base.
        runtime: ``torch`` or ``onnx`` (a folder written by ``binder export --format onnx``, run
            by onnxruntime); None: the format's own.

    Raises:
        ModelLoadError: one error naming the source and what was expected.
    """
    model = _load(source, device, verify, revision, pretrained, modalities, runtime)
    if adapters is not None:
        from binder.adapters import load_adapters

        model = load_adapters(model, adapters).to(device).eval()
    return model


def _load(source: "str | Path", device: "str | torch.device", verify: bool, revision: Optional[str],
          pretrained: Optional[str], modalities: Optional[Sequence[str]], runtime: Optional[str]) -> Any:
    text = str(source)
    if text.startswith("open_clip:"):
        return _open_clip_model(text, pretrained, device)
    from binder.hub import resolve

    local = Path(text).expanduser()
    if not local.exists():
        recover(local.absolute())  # a folder a killed save had moved aside
    options = {"device": device, "verify": verify, **({"modalities": modalities} if modalities is not None else {})}
    if not local.exists() and text in MODELS:
        return create_model(text, pretrained=True, **options)
    resolved = resolve(text, revision=revision, verify=verify)
    kind = resolved.kind if resolved.kind in FORMATS else recognise(resolved.path)
    fmt = FORMATS.get(kind)
    runtimes = getattr(fmt, "runtimes", ("torch",))
    if runtime is not None and runtime not in runtimes:
        hint = " (export it first: binder export MODEL --format onnx -o DIR)" if runtime == "onnx" else ""
        raise ModelLoadError(f"{text!r} is a {kind} model, which loads into the {'/'.join(runtimes)} runtime, not "
                             f"{runtime!r}{hint}")
    return fmt.load(resolved.path, **options)


class HubMixin:
    """Hugging Face habits on a model: ``save_pretrained``, ``from_pretrained``, ``push_to_hub``."""

    def save_pretrained(self, save_directory: "str | Path", *, push_to_hub: bool = False,
                        repo_id: Optional[str] = None, **hub_kwargs: Any) -> Path:
        """Save to a folder (see :func:`binder.save`); with ``push_to_hub``, also upload it to the
        Hugging Face Hub repository ``repo_id`` (default: the folder's name)."""
        path = save(self, save_directory)
        if push_to_hub:
            from binder.hub import push_folder_to_hub

            push_folder_to_hub(path, repo_id or path.name, **hub_kwargs)
        return path

    @classmethod
    def from_pretrained(cls, name_or_path: "str | Path", **kwargs: Any) -> Any:
        """Load a model from a folder, ``hf-hub:org/name``, a pretrained name or a checkpoint
        (everything :func:`binder.load` accepts; keyword arguments go to it)."""
        model = load(name_or_path, **kwargs)
        if not isinstance(model, cls):
            raise BinderInputError(f"{str(name_or_path)!r} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, *, token: Optional[str] = None, private: bool = False,
                    commit_message: str = "Upload binder model") -> str:
        """Save to a temporary folder and upload it to the Hugging Face Hub; returns the URL."""
        import tempfile

        from binder.hub import push_folder_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            folder = save(self, Path(tmp) / "model")
            return push_folder_to_hub(folder, repo_id, token=token, private=private, commit_message=commit_message)


# ----------------------------------------------------------------------------------------------
# Merging models that share an anchor
# ----------------------------------------------------------------------------------------------

def merge(*models: Any, device: "str | torch.device" = "cpu") -> Any:
    """One model that embeds every modality of ``models`` (models or anything :func:`load` takes).

    The models must share their anchor exactly (same fingerprint of the anchor's weights), so
    encoders trained separately against it land in the same space.

    Raises:
        BinderInputError: fewer than two models, different anchors, or a modality bound twice.
    """
    if len(models) < 2:
        raise BinderInputError(f"merge() needs at least two models, got {len(models)}")
    loaded = [m if isinstance(m, torch.nn.Module) else load(m, device=device) for m in models]
    names = [getattr(m, "name_or_path", None) or f"model {i}" for i, m in enumerate(loaded)]
    first = loaded[0]
    for name, m in zip(names[1:], loaded[1:]):
        if m.anchor.fingerprint() != first.anchor.fingerprint():
            raise BinderInputError(f"cannot merge {name} into {names[0]}: their anchors differ (fingerprints "
                                   f"{m.anchor.fingerprint()[:12]} vs {first.anchor.fingerprint()[:12]}); encoders "
                                   "bound to different anchors do not share an embedding space")
    owner: Dict[str, str] = {}
    for name, m in zip(names, loaded):
        for modality in m.bound_modalities:
            if modality in owner:
                raise BinderInputError(f"{modality} is bound in both {owner[modality]} and {name}; merge models "
                                       "with different modalities")
            owner[modality] = name
    merged = type(first)(first.anchor, {mod: cfg for m in loaded for mod, cfg in m.configs.items()})
    state = {k: v for m in loaded for k, v in m.state_dict().items() if not k.startswith("anchor.")}
    merged.load_state_dict(state, strict=False)
    for m in loaded:  # each model's own bound modalities keep their calibration; image/text from the first
        merged.query_spreads.update({k: v for k, v in m.query_spreads.items() if k in m.bound_modalities})
    merged.query_spreads.update({k: v for k, v in first.query_spreads.items() if k not in merged.query_spreads})
    return merged.to(device).eval()
