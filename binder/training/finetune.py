"""How a run trains its model: in full, through LoRA adapters, or selectively (the ``finetune`` group).

ImageBind's users ask for LoRA (its issue #47) and for fine-tuning one modality with the rest
frozen (#28). ``finetune=full`` (the default) trains every parameter of the run's modalities;
``finetune=lora`` puts low-rank adapters (Hu et al., arXiv 2106.09685; :mod:`binder.adapters`)
into their encoders and trains only those, plus what ``finetune.unfreeze`` names;
``finetune=selective`` trains one modality's whole encoder, its last N blocks or its head. In
every mode the anchor and every bound modality the run does not train stay frozen (bit for bit:
their modules also stay in eval mode, so no running statistic moves), and LoRA and selective runs
need ``init_from`` (a model to adapt) that already binds the modality they adapt.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch import nn

from binder.config import SCHEMAS, build_dataclass, to_dict
from binder.errors import BinderConfigError

log = logging.getLogger(__name__)

MODES = ("full", "lora", "selective")
PARTS = ("encoder", "blocks", "head")


@dataclass
class FullConfig:
    """``finetune=full``: every encoder and head of the run's modalities trains."""

    mode: str = "full"


@dataclass
class LoraConfig:
    """``finetune=lora``: LoRA adapters in the encoders of the run's modalities (peft)."""

    mode: str = "lora"
    rank: int = 8  # rank r of each update B A
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: List[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj"])  # module-name suffixes
    unfreeze: List[str] = field(default_factory=list)  # parameter names (wildcards) that train too, e.g. heads.audio.*
    save_merged: bool = True  # also save the merged model in <run>/model (adapters always go to <run>/adapters)


@dataclass
class SelectiveConfig:
    """``finetune=selective``: one modality's encoder (all of it, its last blocks, or its head)."""

    mode: str = "selective"
    modality: Optional[str] = None  # the modality to fine-tune; None: the run's single modality
    part: str = "encoder"  # encoder: all of it | blocks: its last `blocks` blocks and final norm | head: the head only
    blocks: int = 2  # with part=blocks: how many of the last blocks train
    head: bool = True  # with part=encoder or blocks: the head trains too


SCHEMAS.register("finetune/full", FullConfig)
SCHEMAS.register("finetune/lora", LoraConfig)
SCHEMAS.register("finetune/selective", SelectiveConfig)

SCHEMA_OF = {"full": FullConfig, "lora": LoraConfig, "selective": SelectiveConfig}


def finetune_config(cfg: Any) -> Any:
    """The run's ``finetune`` node as its dataclass (``full`` when the node is absent)."""
    node = cfg.get("finetune") if hasattr(cfg, "get") else None
    if node is None:
        return FullConfig()
    values = to_dict(node)
    mode = values.get("mode", "full")
    if mode not in SCHEMA_OF:
        raise BinderConfigError(f"finetune.mode must be one of {list(MODES)}, got {mode!r}")
    out = build_dataclass(SCHEMA_OF[mode], values, "finetune")
    if mode == "lora":
        from binder.adapters import LoraSettings

        LoraSettings(rank=out.rank, alpha=out.alpha, dropout=out.dropout, target_modules=list(out.target_modules))
    if mode == "selective":
        if out.part not in PARTS:
            raise BinderConfigError(f"finetune.part must be one of {list(PARTS)}, got {out.part!r}")
        if isinstance(out.blocks, bool) or out.blocks < 1:
            raise BinderConfigError(f"finetune.blocks must be a positive integer, got {out.blocks!r}")
    return out


def check_base(ft: Any, base_modalities: Sequence[str], modalities: Sequence[str], init_from: Any) -> None:
    """Before the model is built: LoRA and selective runs adapt a model that binds their modality."""
    if ft.mode == "full":
        return
    if not init_from:
        raise BinderConfigError(f"finetune={ft.mode} adapts a trained model: set init_from=<model folder or name>")
    targets = [ft.modality] if ft.mode == "selective" and ft.modality else list(modalities)
    if ft.mode == "selective" and len(targets) != 1:
        raise BinderConfigError(f"finetune=selective fine-tunes one modality: set finetune.modality (the run has "
                                f"{list(modalities)})")
    if ft.mode == "selective" and targets[0] not in modalities:
        raise BinderConfigError(f"finetune.modality={targets[0]!r} is not a modality of this run ({list(modalities)}): "
                                f"add modality={targets[0]}")
    lacking = [m for m in targets if m not in base_modalities]
    if lacking:
        raise BinderConfigError(f"finetune={ft.mode} of {lacking}: the model {init_from} does not bind "
                                f"{'it' if len(lacking) == 1 else 'them'} (it binds {list(base_modalities)})")


def _freeze_all(model: Any) -> None:
    for m in model.bound_modalities:
        model.encoders[m].requires_grad_(False)
        model.heads[m].requires_grad_(False)


def _unfreeze(model: Any, patterns: Sequence[str]) -> List[str]:
    names = [n for n, _ in model.named_parameters() if not n.startswith("anchor.")]
    chosen = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise BinderConfigError(f"finetune.unfreeze: {pattern!r} names no parameter of the model (e.g. "
                                    f"{', '.join(names[:3])}, ...)")
        chosen += hits
    for name, p in model.named_parameters():
        if name in chosen:
            p.requires_grad_(True)
    return chosen


def _selective(model: Any, ft: SelectiveConfig, modality: str) -> None:
    encoder, head = model.encoders[modality], model.heads[modality]
    if ft.part == "head":
        head.requires_grad_(True)
        if not any(p.requires_grad for p in head.parameters()):
            raise BinderConfigError(f"the {modality} model has no head to fine-tune (its encoder projects itself)")
        return
    head.requires_grad_(ft.head)
    if ft.part == "encoder":
        encoder.requires_grad_(True)
        return
    blocks = getattr(encoder, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise BinderConfigError(f"finetune.part=blocks: the {modality} encoder has no blocks (use part=encoder)")
    if ft.blocks > len(blocks):
        raise BinderConfigError(f"finetune.blocks={ft.blocks}: the {modality} encoder has only {len(blocks)} blocks")
    for block in list(blocks)[-ft.blocks:]:
        block.requires_grad_(True)
    for name in ("norm", "proj"):
        part = getattr(encoder, name, None)
        if isinstance(part, nn.Module):
            part.requires_grad_(True)


def prepare(model: Any, ft: Any, modalities: Sequence[str]) -> Dict[str, Any]:
    """Set what trains in ``model`` for a run of ``modalities``; returns the summary the run logs
    and records (mode, trainable and total parameter counts)."""
    _freeze_all(model)
    if ft.mode == "full":
        for m in modalities:
            model.encoders[m].requires_grad_(True)
            model.heads[m].requires_grad_(True)
    elif ft.mode == "selective":
        _selective(model, ft, ft.modality or modalities[0])
    else:
        from binder.adapters import LoraSettings, add_lora

        settings = LoraSettings(rank=ft.rank, alpha=ft.alpha, dropout=ft.dropout,
                                target_modules=list(ft.target_modules))
        add_lora(model, list(modalities), settings)
        _unfreeze(model, ft.unfreeze)
    trainable = sum(p.numel() for p in model.trainable_parameters())
    total = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("anchor."))
    summary = {"mode": ft.mode, "trainable_parameters": trainable, "bound_parameters": total}
    log.info("fine-tuning: %s, %s of %s parameters of the bound encoders train (%.2f%%)", ft.mode, f"{trainable:,}",
             f"{total:,}", 100.0 * trainable / max(1, total))
    return summary


def frozen_modules(model: Any) -> List[nn.Module]:
    """Modules that keep eval mode while the rest trains: encoders and heads with no trainable
    parameter, and batch norms whose affine parameters are frozen (their statistics stay put)."""
    out = []
    for m in model.bound_modalities:
        for part in (model.encoders[m], model.heads[m]):
            if not any(p.requires_grad for p in part.parameters()):
                out.append(part)
                continue
            out += [mod for mod in part.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
                    and not any(p.requires_grad for p in mod.parameters())]
    return out


def save_outputs(model: Any, ft: Any, run_dir: Path, init_from: Any) -> Path:
    """After training: a LoRA run writes ``<run>/adapters``, then (with ``save_merged``) merges
    them into ``model`` in place, which embeds as before; every run but an unmerged LoRA one
    writes ``model`` to ``<run>/model``. Returns the model folder (or the adapters folder)."""
    from binder.io import save

    if ft.mode == "lora":
        from binder.adapters import merge_adapters, save_adapters

        adapters = save_adapters(model, run_dir / "adapters", base=str(init_from))
        if not ft.save_merged:
            return adapters
        merge_adapters(model)
    return save(model, run_dir / "model")
