"""Training stages: a run that goes on as fine-tuning runs, each starting from the model the one
before it saved.

``stages.<name>`` is a partial config merged over the run's own, in order; each stage is an
ordinary :func:`~binder.training.tasks.bind` run in ``<run>/stages/<name>`` with ``init_from`` set
to the previous model. The use it was built for is synthetic-to-real fine-tuning (train on
recordings plus many synthetic voices, then briefly on the recordings alone at a lower learning
rate), as Tremblay et al. fine-tune on real images a network trained on randomised synthetic ones
("Training Deep Networks with Synthetic Data: Bridging the Reality Gap by Domain Randomization",
CVPR Workshops 2018). The run's ``metrics.json`` holds the last stage's figures and model, and
every stage's figures under ``stages``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from binder.errors import BinderConfigError

log = logging.getLogger(__name__)

BASE = "base"  # the run's own training, before its stages
# keys a stage cannot set: the stage machinery sets them (where it runs, what it starts from)
RESERVED = ("task", "run_dir", "init_from", "stages", "ckpt_path", "resume")
OPEN_GROUPS = ("trainer", "callbacks", "logger")  # Lightning's own keys, checked against their targets
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def stage_overrides(cfg: DictConfig, check: Optional[Callable[[DictConfig], None]] = None
                    ) -> List[Tuple[str, Dict[str, Any]]]:
    """``cfg.stages`` checked -> ``[(name, partial config)]`` in order (empty without stages). Each
    stage is merged over the run's config before anything trains: a key its schema lacks or a
    value of the wrong type is an error now, not after the run; ``check`` (the trainer, callbacks
    and logger keys) runs on the merged config too."""
    stages = cfg.get("stages")
    if not stages:
        return []
    if not OmegaConf.is_dict(stages):
        raise BinderConfigError(f"stages must map a stage name to a partial config, got {stages!r}")
    out, planned = [], [_processes(cfg.trainer)]
    for name, node in stages.items():
        if node is None:  # stages.<name>=null switches one off
            continue
        if not NAME.match(str(name)) or name == BASE:
            raise BinderConfigError(f"stages.{name}: a stage name is letters, digits, '_' and '-' (not {BASE!r})")
        if not OmegaConf.is_dict(node):
            raise BinderConfigError(f"stages.{name} must be a partial config (e.g. optim: {{lr: 2e-4}}), got {node!r}")
        bad = sorted(set(node.keys()) & set(RESERVED))
        if bad:
            raise BinderConfigError(f"stages.{name} sets {bad}: a stage starts from the previous stage's model in "
                                    f"<run>/stages/{name}, so it cannot set {list(RESERVED)}")
        partial = OmegaConf.to_container(node, resolve=False)
        planned.append(_processes(_trial(cfg, str(name), partial, check).trainer))
        out.append((str(name), partial))
    if out and max(planned) > 1:
        raise BinderConfigError(f"stages {[n for n, _ in out]} run one after another in one process: train them "
                                "as separate runs (init_from=<run>/model) or set trainer.devices=1")
    return out


def _trial(cfg: DictConfig, name: str, partial: Dict[str, Any],
           check: Optional[Callable[[DictConfig], None]]) -> DictConfig:
    """One stage merged over the run's config as it will run, checked by ``check`` (the trainer,
    callbacks and logger keys)."""
    merged = _merge(cfg, name, partial)
    if check is not None:
        check(merged)
    return merged


def _merge(cfg: DictConfig, name: str, partial: Dict[str, Any]) -> DictConfig:
    """``partial`` merged over the run's typed config (the open-ended trainer, callbacks and logger
    nodes opened), or a clear error for a key or value its schema refuses."""
    trial = cfg.copy()
    for group in OPEN_GROUPS:
        if group in trial and OmegaConf.is_dict(trial[group]):
            OmegaConf.set_struct(trial[group], False)
    try:
        return OmegaConf.merge(trial, partial)
    except Exception as err:  # omegaconf's key and validation errors
        raise BinderConfigError(f"stages.{name}: {str(err).splitlines()[0]}") from None


def _processes(trainer: Any) -> int:
    """How many processes the trainer config plans: nodes x devices (a list or "0,1" of device
    indices, a count, or auto / -1: every visible GPU, one process on a CPU)."""
    nodes, devices = int(trainer.get("num_nodes") or 1), trainer.get("devices", "auto")
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return nodes * len(devices)
    text = str(devices).strip()
    if "," in text:
        return nodes * len([d for d in text.split(",") if d.strip()])
    if text in ("auto", "-1"):
        cpu = str(trainer.get("accelerator") or "auto").lower() in ("cpu", "mps")
        return nodes * max(1, 0 if cpu else torch.cuda.device_count())
    return nodes * int(text)


def stage_config(cfg: DictConfig, name: str, partial: Dict[str, Any], init_from: str) -> DictConfig:
    """The run's config with one stage merged over it (the merge :func:`stage_overrides` checked),
    starting from ``init_from`` in its own folder."""
    merged = _merge(cfg, name, partial)
    OmegaConf.set_struct(merged, False)
    merged.pop("stages", None)
    merged.init_from, merged.run_dir = init_from, str(Path(cfg.run_dir) / "stages" / name)
    merged.ckpt_path, merged.resume = None, False
    return merged


def run_stages(cfg: DictConfig, base: Dict[str, Any], stages: List[Tuple[str, Dict[str, Any]]],
               bind: Callable[[DictConfig], Dict[str, Any]]) -> Dict[str, Any]:
    """Run ``stages`` after the base run's ``base`` metrics -> the last stage's metrics, with every
    stage's zero-shot rows and fit time under ``stages`` and the total fit time."""
    import lightning as L

    done = {BASE: _summary(base)}
    metrics = base
    for name, partial in stages:
        log.info("stage %s: fine-tuning %s", name, metrics["model_dir"])
        sub = stage_config(cfg, name, partial, metrics["model_dir"])
        L.seed_everything(sub.seed, workers=True, verbose=False)  # as a run of its own would
        metrics = bind(sub)
        done[name] = _summary(metrics)
    total = sum((s.get("fit_seconds") or 0) for s in done.values())
    finetune = dict(metrics.get("finetune") or {}, fit_seconds=round(total, 1))
    return dict(metrics, finetune=finetune, stages=done)


def _summary(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """One stage's zero-shot rows, model folder and fit time."""
    return {"zero_shot": metrics.get("zero_shot", {}), "model_dir": metrics.get("model_dir"),
            "fit_seconds": (metrics.get("finetune") or {}).get("fit_seconds")}
