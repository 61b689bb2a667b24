"""LoRA adapters on bound encoders: add, save, load, merge (Hu et al., "LoRA", arXiv 2106.09685).

Low-rank adapters go into a bound modality's encoder through Hugging Face ``peft``
(``inject_adapter_in_model``): every ``nn.Linear`` (or other layer peft supports) whose module
name ends with one of ``target_modules`` (binder's trunks: ``attn.qkv`` and ``attn.proj`` by
default) gains ``W + (alpha / rank) B A`` with ``B`` starting at zero, so a fresh adapter leaves
the model's embeddings unchanged. Only the adapter matrices train, plus what the user unfreezes
explicitly (a head, a norm), which the adapter file then carries whole.

An adapter folder holds ``adapter_model.safetensors`` (the adapter tensors under the names they
have in the adapted model) and ``adapter_config.json``: per modality the settings and the
fingerprint of the base encoder it was trained on (:meth:`binder.model.BindModel.fingerprint`),
plus the SHA-256 of the weight file. :func:`load_adapters` refuses another base, an edited or
truncated file and unknown tensors; :func:`merge_adapters` folds the adapters into the weights,
giving a plain model that embeds as the adapted one does. Folders are written atomically.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from binder.errors import BinderConfigError, BinderInputError, MissingDependencyError, ModelLoadError
from binder.files import atomic_folder, file_digest, read_json_config

log = logging.getLogger(__name__)

FORMAT, VERSION = "binder-adapters", 1
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_NAME = "default"  # peft's adapter name inside the adapted modules
DEFAULT_TARGETS = ("attn.qkv", "attn.proj")  # binder.layers.Attention's projections


@dataclass
class LoraSettings:
    """One modality's LoRA settings (what ``adapter_config.json`` records for it)."""

    rank: int = 8  # rank r of the update B A
    alpha: float = 16.0  # scale: the update is multiplied by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input while training
    target_modules: List[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))  # module-name suffixes

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise BinderConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise BinderConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise BinderConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = list(self.target_modules) if isinstance(self.target_modules, (list, tuple)) else None
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise BinderConfigError(f"LoRA target_modules must be a non-empty list of module names, got "
                                    f"{self.target_modules!r}")
        self.target_modules = targets


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("peft", "LoRA adapters", "lora") from None
    return peft


def is_adapted(module: nn.Module) -> bool:
    """Whether ``module`` holds LoRA layers."""
    return any(".lora_" in name or name.startswith("lora_") for name, _ in module.named_parameters())


def adapted_modalities(model: Any) -> List[str]:
    """The bound modalities of ``model`` whose encoders carry adapters."""
    return [m for m in model.bound_modalities if is_adapted(model.encoders[m])]


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")


def _check_targets(encoder: nn.Module, modality: str, targets: Sequence[str]) -> None:
    """Every target names at least one module of the encoder (peft's own message is a traceback)."""
    names = [n for n, _ in encoder.named_modules() if n]
    linear = sorted({re.sub(r"^.*?(?:blocks\.\d+\.)", "", n) for n, m in encoder.named_modules()
                     if isinstance(m, (nn.Linear, nn.Conv2d))})
    for target in targets:
        if not any(_matches(n, target) for n in names):
            raise BinderConfigError(f"LoRA target module {target!r} does not exist in the {modality} encoder; its "
                                    f"linear layers are: {', '.join(linear)}")


def add_lora(model: Any, modalities: Sequence[str], settings: LoraSettings) -> Dict[str, int]:
    """Put fresh LoRA adapters into the encoders of ``modalities`` and freeze everything else
    of them (heads included: unfreeze what should train too with ``requires_grad_``).

    Returns:
        ``{modality: adapter parameter count}``.

    Raises:
        BinderInputError: a modality the model does not bind, or one that already has adapters.
        BinderConfigError: a target module that does not exist (nothing is changed then).
    """
    peft = _peft()
    missing = [m for m in modalities if m not in model.bound_modalities]
    if missing:
        raise BinderInputError(f"cannot add LoRA adapters to {missing}: the model binds {model.bound_modalities}")
    for m in modalities:
        if is_adapted(model.encoders[m]):
            raise BinderInputError(f"the {m} encoder already has LoRA adapters (merge them first)")
        _check_targets(model.encoders[m], m, settings.target_modules)  # all checked before any change
    base = dict(getattr(model, "adapter_base", {}))
    counts = {}
    for m in modalities:
        base[m] = {"fingerprint": model.fingerprint(m), "settings": asdict(settings)}
        config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                 target_modules=list(settings.target_modules), bias="none")
        try:
            peft.inject_adapter_in_model(config, model.encoders[m], adapter_name=ADAPTER_NAME)
        except (ValueError, TypeError, RuntimeError) as err:
            raise BinderConfigError(f"LoRA on the {m} encoder: {err}") from None
        for part in (model.encoders[m], model.heads[m]):
            for name, p in part.named_parameters():
                p.requires_grad_(".lora_" in name or name.startswith("lora_"))
        counts[m] = sum(p.numel() for p in model.encoders[m].parameters() if p.requires_grad)
    model.adapter_base = base
    return counts


def adapter_state(model: Any) -> Dict[str, torch.Tensor]:
    """The tensors an adapter folder stores: every LoRA tensor of the adapted encoders, and every
    other trainable tensor of their encoders and heads (what the user unfroze), by their names
    in ``model.state_dict()``."""
    out = {}
    for m in adapted_modalities(model):
        for prefix, part in ((f"encoders.{m}.", model.encoders[m]), (f"heads.{m}.", model.heads[m])):
            for name, p in part.named_parameters():
                if ".lora_" in name or p.requires_grad:
                    out[prefix + name] = p.detach().cpu().contiguous().clone()
    return out


def save_adapters(model: Any, path: "str | Path", base: Optional[str] = None) -> Path:
    """Write the adapters of ``model`` (and what was unfrozen with them) to the folder ``path``
    atomically. ``base``: where the base model comes from, recorded for the reader."""
    from safetensors.torch import save_file

    modalities = adapted_modalities(model)
    if not modalities:
        raise BinderInputError("the model carries no LoRA adapters to save")
    records = getattr(model, "adapter_base", {})
    path = Path(path).expanduser().absolute()
    with atomic_folder(path) as tmp:
        state = adapter_state(model)
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
        config = {"format": FORMAT, "version": VERSION, "base": base, "anchor_fingerprint": model.anchor.fingerprint(),
                  "modalities": {m: records[m] for m in modalities},
                  "files": {WEIGHTS_NAME: file_digest(tmp / WEIGHTS_NAME)}}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    log.info("saved %s adapters (%d tensors) to %s", "+".join(modalities), len(state), path)
    return path


def read_adapter_config(path: Path) -> Dict[str, Any]:
    """Read and check ``adapter_config.json`` of an adapter folder (one ModelLoadError each)."""
    cfg_path = path / CONFIG_NAME
    config = read_json_config(path, CONFIG_NAME, "an adapter folder")
    where = repr(str(cfg_path))
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelLoadError(f"{where} is not a binder adapter config (key 'format' must be {FORMAT!r})")
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise ModelLoadError(f"{where}: unsupported adapter format version {config.get('version')!r}")
    mods = config.get("modalities")
    if not isinstance(mods, dict) or not mods:
        raise ModelLoadError(f"{where}: key 'modalities' must be a non-empty object")
    for m, record in mods.items():
        if not isinstance(record, dict) or not isinstance(record.get("fingerprint"), str):
            raise ModelLoadError(f"{where}: modalities.{m} needs a 'fingerprint' string and 'settings'")
        try:
            record["settings"] = LoraSettings(**record.get("settings", {}))
        except (TypeError, BinderConfigError) as err:
            raise ModelLoadError(f"{where}: modalities.{m}.settings: {err}") from None
    return config


def _read_state(path: Path, config: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"adapter folder {str(path)!r} lacks {WEIGHTS_NAME}")
    expected = (config.get("files") or {}).get(WEIGHTS_NAME)
    if not isinstance(expected, str) or file_digest(weights) != expected:
        raise ModelLoadError(f"{str(weights)!r} does not match the SHA-256 recorded in {CONFIG_NAME}: the file is "
                             "truncated, corrupt or was edited after saving")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{str(weights)!r} is not a readable safetensors file: {err}") from None


def load_adapters(model: Any, path: "str | Path") -> Any:
    """Put the adapters of the folder ``path`` onto ``model`` (in place; returned).

    Raises:
        ModelLoadError: not an adapter folder; a weight file that is truncated or was edited; a
            modality the model does not bind; a base encoder other than the one the adapters were
            trained on (its fingerprint differs); tensors that do not fit. Nothing is changed then.
    """
    path = Path(path).expanduser()
    config = read_adapter_config(path)
    state = _read_state(path, config)
    for m, record in config["modalities"].items():
        if m not in model.bound_modalities:
            raise ModelLoadError(f"adapters {str(path)!r} are for {m}, which this model does not bind "
                                 f"({model.bound_modalities})")
        if is_adapted(model.encoders[m]):
            raise ModelLoadError(f"the {m} encoder already carries adapters; load {str(path)!r} onto its base")
        if model.fingerprint(m) != record["fingerprint"]:
            raise ModelLoadError(f"adapters {str(path)!r} were trained on another {m} encoder (base fingerprint "
                                 f"{record['fingerprint'][:12]}, this model's {model.fingerprint(m)[:12]}); load them "
                                 f"onto the model they were trained from ({config.get('base') or 'unrecorded'})")
    backup = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("anchor.")}
    try:
        for m, record in config["modalities"].items():
            add_lora(model, [m], record["settings"])
        _assign(model, state, path, list(config["modalities"]))
    except BaseException:
        _restore(model, list(config["modalities"]), backup)
        raise
    model.adapter_base = {m: {"fingerprint": r["fingerprint"], "settings": asdict(r["settings"])}
                          for m, r in config["modalities"].items()}
    return model


def _assign(model: Any, state: Dict[str, torch.Tensor], path: Path, modalities: Sequence[str]) -> None:
    current = model.state_dict()
    unknown = sorted(k for k in state if k not in current or k.startswith("anchor."))
    if unknown:
        raise ModelLoadError(f"adapters {str(path)!r} hold tensors this model does not have: {unknown[:5]}")
    bad = [f"{k}: {tuple(v.shape)} != {tuple(current[k].shape)}" for k, v in state.items()
           if v.shape != current[k].shape]
    if bad:
        raise ModelLoadError(f"adapters {str(path)!r} have tensors of the wrong shape: {bad[:5]}")
    absent = sorted(k for k in current if ".lora_" in k and k.split(".")[1] in modalities and k not in state)
    if absent:
        raise ModelLoadError(f"adapters {str(path)!r} lack tensors their config implies: {absent[:5]}")
    model.load_state_dict(state, strict=False)


def _restore(model: Any, modalities: Sequence[str], backup: Dict[str, torch.Tensor]) -> None:
    """Undo a failed :func:`load_adapters`: drop injected layers, put the weights back."""
    for m in modalities:
        _unload(model.encoders[m], merge=False)
    model.load_state_dict(backup, strict=False)


def _unload(encoder: nn.Module, merge: bool) -> None:
    """Replace every LoRA layer of ``encoder`` by its base layer (merged into it if ``merge``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(encoder.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            if merge:
                module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = encoder.get_submodule(parent_name) if parent_name else encoder
            setattr(parent, child, module.get_base_layer())


def merge_adapters(model: Any) -> Any:
    """Fold every adapter of ``model`` into its weights (in place; returned): a plain model of the
    base's architecture that embeds as the adapted one, which :func:`binder.save` can write.

    Raises:
        BinderInputError: the model carries no adapters.
        ModelLoadError: merging gives non-finite weights.
    """
    modalities = adapted_modalities(model)
    if not modalities:
        raise BinderInputError("the model carries no LoRA adapters to merge")
    _peft()
    for m in modalities:
        try:
            _unload(model.encoders[m], merge=True)
        except ValueError as err:  # peft's safe_merge: NaN or inf
            raise ModelLoadError(f"merging the {m} adapters gives non-finite weights: {err}") from None
        for part in (model.encoders[m], model.heads[m]):
            part.requires_grad_(True)
    model.adapter_base = {}
    return model


def trainable_count(model: Any) -> int:
    """Parameters of ``model``'s encoders and heads that train."""
    return sum(p.numel() for p in model.trainable_parameters())
