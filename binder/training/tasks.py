"""The binding task and its building blocks (ImageBind, arXiv 2305.05665, sec. 3).

:func:`bind` is the default task of a run (``cfg.task``): it trains every modality listed in
``modality=`` against the frozen anchor (ImageBind's recipe, one model for all of them), saves the
model and runs the emergent zero-shot evaluation. The building blocks (the model, the trainer,
the checked config groups) are what the recipes of :mod:`binder.recipes` compose their own tasks
from. Paths, the data and every config group are checked before anything expensive starts.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from binder.arithmetic import calibrate_from_datamodule
from binder.config import build_dataclass, check_keys, instantiate, to_dict
from binder.errors import BinderConfigError
from binder.evaluation import EvalConfig, digits_row, evaluate_inputs, format_table, write_json, write_metrics
from binder.io import load
from binder.model import BindModel
from binder.registry import build_config, get_modality
from binder.training.cache import cache_settings, cache_spec, make_cache, open_cache
from binder.training.checkpoints import resume_checkpoint
from binder.training.data import build_datamodule, check_data
from binder.training.distributed import RankAgreement, config_digest
from binder.training.finetune import check_base, finetune_config, prepare, save_outputs
from binder.training.module import BindingModule
from binder.training.stages import run_stages, stage_overrides
from binder.training.speed import SpeedConfig, apply_to_model, describe, gpu_planned, is_oom, oom_error, resolve
from binder.training.optim import OptimConfig

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

def modalities_of(cfg: DictConfig) -> List[str]:
    """The bound modalities a run trains (the keys of ``cfg.modality``), each registered."""
    names = list(cfg.modality.keys()) if cfg.get("modality") else []
    if not names:
        raise BinderConfigError("no modality selected: pass modality=<name> (or modality=[audio,depth])")
    for name in names:
        get_modality(name)
    return names


def require_one(modalities: List[str], what: str) -> str:
    """The single modality of a task that trains one."""
    if len(modalities) != 1:
        raise BinderConfigError(f"{what} trains one modality at a time, got modality={modalities}")
    return modalities[0]


def optim_config(cfg: DictConfig) -> OptimConfig:
    """The ``optim`` node as an :class:`OptimConfig`."""
    return build_dataclass(OptimConfig, cfg.optim, "optim")


def anchor_settings(node: Any) -> Dict[str, Any]:
    """The anchor node without its ``_target_``, ``build`` and ``cache`` keys."""
    return {k: v for k, v in to_dict(node).items() if k not in ("_target_", "build", "cache")}


def anchor_weights(node: Any) -> Optional[Path]:
    """The file an anchor's weights come from when it is local: its ``pretrained`` checkpoint, or
    the weights of its ``local-dir:`` folder (None for tags and hub models)."""
    model, pretrained = str(node.get("model") or ""), node.get("pretrained")
    if pretrained and ("/" in str(pretrained) or str(pretrained).endswith((".safetensors", ".pt", ".pth", ".bin"))):
        return Path(os.path.expanduser(str(pretrained)))  # a checkpoint file, not a pretrained tag
    if model.startswith("local-dir:"):
        return Path(os.path.expanduser(model[len("local-dir:"):])) / "open_clip_model.safetensors"
    return None


def ensure_anchor(node: Any) -> None:
    """Run the anchor's ``build`` recipe when its local weights do not exist yet."""
    weights = anchor_weights(node)
    if node.get("build") and weights is not None and not weights.is_file():
        log.info("anchor %s not found: building it first", weights.parent)
        instantiate(node.build, "anchor.build").run(anchor_settings(node))


def build_model(cfg: DictConfig) -> BindModel:
    """The anchor (built first if its recipe says so) plus the run's modalities, or the saved
    model named by ``init_from`` (which brings its own anchor) for fine-tuning. A modality the
    saved model binds keeps its saved settings, except train-time ones (``augment``), which the
    run's config gives."""
    configs = {name: build_config(name, node) for name, node in cfg.modality.items()}
    ft = finetune_config(cfg)
    if not cfg.get("init_from"):
        check_base(ft, [], list(configs), None)
    else:
        model = load(cfg.init_from)
        check_base(ft, model.bound_modalities, list(configs), cfg.init_from)
        for name, mod_cfg in configs.items():
            if name not in model.bound_modalities:
                model.add_modality(name, mod_cfg)
            elif hasattr(mod_cfg, "augment") and hasattr(model.configs[name], "augment"):
                model.configs[name] = dataclasses.replace(model.configs[name], augment=mod_cfg.augment)
        log.info("initialised from %s", cfg.init_from)
        return model
    ensure_anchor(cfg.anchor)
    node = {k: v for k, v in to_dict(cfg.anchor).items() if k not in ("build", "cache")}
    anchor = instantiate(node, "anchor")
    return BindModel(anchor, configs)


def _group(cfg: DictConfig, name: str) -> Dict[str, Any]:
    node = cfg.get(name) or {}
    return {k: v for k, v in node.items() if v is not None}


def check_groups(cfg: DictConfig) -> None:
    """Check the keys of the trainer, callbacks and logger groups against their targets."""
    check_keys(cfg.trainer, "trainer", allowed_extra=("callbacks", "logger", "default_root_dir"))
    for group in ("callbacks", "logger"):
        for name, node in _group(cfg, group).items():
            check_keys(node, f"{group}.{name}")


def speed_config(cfg: DictConfig) -> SpeedConfig:
    """The ``speed`` node with every ``auto`` resolved for the device the run trains on."""
    return resolve(build_dataclass(SpeedConfig, cfg.get("speed") or {}, "speed"), gpu_planned(cfg.trainer))


def device_features(datamodule: Any, module: BindingModule, speed: SpeedConfig) -> List[str]:
    """With ``speed.audio_features=device``, the modalities whose preprocessors can split into raw
    reading (loader) and batched features (device) read raw, where the data decodes every pair at
    every step (manifests, shards); their augmentation then runs on the device too."""
    if speed.audio_features != "device" or not getattr(datamodule, "reads_per_step", False):
        return []
    names = [m for m in datamodule.modalities if hasattr(datamodule.preprocessors[m], "raw")
             and hasattr(datamodule.preprocessors[m], "features")]
    waveform = [m for m in names if getattr(datamodule.augments.get(m), "variants", 0)]
    if waveform:  # speed, pitch, noise and room responses change the waveform: they stay in the loader
        log.info("speed: %s keep features in the loader (waveform augmentation)", ", ".join(waveform))
        names = [m for m in names if m not in waveform]
    datamodule.device_features = set(names)
    module.device_augments = {m: datamodule.augments[m] for m in names if datamodule.augments.get(m) is not None}
    if names:
        log.info("speed: %s features computed batched on the device from raw clips", ", ".join(names))
    return names


def make_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` with the ``callbacks`` and ``logger`` groups (plus
    the check that every process of a multi-process run has the same config and data); a null
    ``trainer.precision`` takes ``speed.precision``."""
    callbacks = [instantiate(node, f"callbacks.{name}") for name, node in _group(cfg, "callbacks").items()]
    callbacks.append(RankAgreement(config_digest(cfg)))
    loggers = [instantiate(node, f"logger.{name}") for name, node in _group(cfg, "logger").items()]
    trainer_node = dict(to_dict(cfg.trainer))
    if trainer_node.get("precision") is None:
        trainer_node["precision"] = speed_config(cfg).precision
    if trainer_node.get("strategy") == "ddp" and len(cfg.get("modality") or ()) > 1:
        trainer_node["strategy"] = "ddp_find_unused_parameters_true"  # a modality whose epoch ended has no grads
    if trainer_node.get("enable_progress_bar") is None:  # bars only on a terminal, never in log files
        trainer_node["enable_progress_bar"] = sys.stderr.isatty()
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):  # binder's own checkpoints, or none
        trainer_node.setdefault("enable_checkpointing", False)
    return instantiate(trainer_node, "trainer", callbacks=callbacks, logger=loggers or False,
                       default_root_dir=str(run_dir))


def evaluate(model: BindModel, datamodule: Any, modality: str, cfg: DictConfig) -> Dict[str, Any]:
    """Emergent zero-shot classification of the held-out set against the anchor's class prompts."""
    inputs, labels = datamodule.zero_shot_set(modality)
    if not len(inputs) or not datamodule.classnames:
        return {}
    eval_cfg = build_dataclass(EvalConfig, cfg.eval, "eval")
    name = f"{type(datamodule).__module__.rsplit('.', 1)[-1]}-{modality}"  # digits-audio, manifest-depth, ...
    result = evaluate_inputs(model, modality, inputs, labels, datamodule.classnames, datamodule.templates, name=name,
                             batch_size=eval_cfg.batch_size)  # the same evaluator and JSON as binder eval
    (Path(cfg.run_dir) / "eval").mkdir(parents=True, exist_ok=True)
    write_json(result.record, Path(cfg.run_dir) / "eval" / f"{name}.json")
    column = "text-paired" if cfg.target == "text" else "emergent"
    return {f"{modality}->text ({column})": digits_row(result)}


def fit(trainer: L.Trainer, module: BindingModule, datamodule: Any, ckpt_path: Optional[str], modalities: List[str],
        cfg: DictConfig, speed: SpeedConfig) -> None:
    """``trainer.fit``, or only the data's setup when nothing is trainable (e.g. video mode=pooled);
    running out of memory is one error saying what to lower."""
    if not any(module.model.modality_parameters(m) for m in modalities):
        log.info("%s has no trainable parameters: evaluating only", "+".join(modalities))
        datamodule.setup("fit")
        return
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except BaseException as err:
        if not is_oom(err):
            raise
        raise oom_error(err, cfg.data.get("batch_size"), speed, str(trainer.strategy.root_device)) from err


def header(cfg: DictConfig, modalities: List[str], data: str, run_dir: Path) -> None:
    """One line on what the run uses and where it writes."""
    tag = f" ({cfg.anchor.pretrained})" if cfg.anchor.get("pretrained") else ""
    anchor = cfg.get("init_from") or f"{cfg.anchor.get('model')}{tag}"
    log.info("binder: %s against %s | data: %s | anchor: %s | cache: %s | run: %s", "+".join(modalities), cfg.target,
             data, anchor, cfg.paths.cache, run_dir)


# ----------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------

def bind(cfg: DictConfig) -> Dict[str, Any]:
    """Train, save and evaluate every modality of ``cfg.modality`` against ``cfg.target``."""
    if cfg.target == "label":
        raise BinderConfigError("target=label trains a classifier, not a binding: use experiment=supervised")
    run_dir = Path(cfg.run_dir).resolve()
    modalities = modalities_of(cfg)
    ckpt_path = resume_checkpoint(cfg, run_dir)  # before anything expensive
    stages = stage_overrides(cfg, check_groups)
    data = check_data(cfg.data, modalities, cfg.target)
    check_groups(cfg)
    ft = finetune_config(cfg)
    header(cfg, modalities, data, run_dir)
    model = build_model(cfg)
    tuning = prepare(model, ft, modalities)
    datamodule = build_datamodule(cfg.data, model, modalities, cfg.target)
    datamodule.use_cache(open_cache(cfg, model, datamodule))
    speed = speed_config(cfg)
    apply_to_model(model, speed, modalities)
    datamodule.pin_memory = speed.pin_memory == "true"
    log.info("speed: %s", describe(speed))
    module = BindingModule(model, optim_config(cfg), target=cfg.target, fused_adamw=speed.fused_adamw == "true")
    device_features(datamodule, module, speed)
    trainer = make_trainer(cfg, run_dir)
    start = time.perf_counter()
    fit(trainer, module, datamodule, ckpt_path, modalities, cfg, speed)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted; no model was saved")
    if not trainer.is_global_zero:  # rank 0 saves and evaluates
        return {"modalities": modalities, "target": cfg.target, "rank": trainer.global_rank}
    if cfg.target == "image" and not cfg.trainer.get("fast_dev_run"):
        calibrate_from_datamodule(model, datamodule)  # compose()'s per-modality spreads, saved with the model
    tuning["fit_seconds"] = round(time.perf_counter() - start, 1)
    model_dir = save_outputs(model, ft, run_dir, cfg.get("init_from"))
    rows: Dict[str, Any] = {}
    if cfg.eval.zero_shot and not cfg.trainer.get("fast_dev_run"):
        for m in modalities:
            rows.update(evaluate(model, datamodule, m, cfg))
    metrics = {"modalities": modalities, "target": cfg.target, "zero_shot": rows, "model_dir": str(model_dir),
               "finetune": tuning}
    skipped = {m: n for m, n in module.skipped.items() if n}
    if skipped:
        log.warning("unreadable samples skipped in training: %s", skipped)
        metrics["skipped"] = skipped
    if stages:  # metrics.json is written once, after the last stage: a finished run is a finished model
        metrics = run_stages(cfg, metrics, stages, bind)
        rows, model_dir = metrics["zero_shot"], metrics["model_dir"]
    metrics_path = write_metrics(run_dir / "metrics.json", metrics)
    if rows:
        log.info("\n%s", format_table(rows, "Zero-shot classification of held-out inputs (%)"))
    log.info("model:   %s", model_dir)
    log.info("metrics: %s", metrics_path)
    return metrics


def cache(cfg: DictConfig) -> Dict[str, Any]:
    """``binder cache``: embed every paired image of the run's data with its anchor into the
    cache ``anchor.cache`` names (``auto`` or unset: the run's default folder under ``paths.cache``)
    and check it; a complete, matching cache is kept as it is."""
    from binder.training.cache import AnchorCache

    modalities = modalities_of(cfg)
    if cfg.target != "image":
        raise BinderConfigError(f"the anchor cache holds image embeddings: binder cache needs target=image, not "
                                f"{cfg.target}")
    data = check_data(cfg.data, modalities, cfg.target)
    log.info("binder cache: the %s anchor's embeddings of the images of %s", cfg.anchor.get("model"), data)
    model = build_model(cfg)
    datamodule = build_datamodule(cfg.data, model, modalities, cfg.target)
    settings = cache_settings(cfg)
    images = datamodule.anchor_images()
    spec = cache_spec(model.anchor, images, settings)
    path = make_cache(cfg, model, images, spec, settings, force=True)
    done = AnchorCache(path, expect=spec, verify="full")
    log.info("anchor cache: %s holds %d images x %d view(s); train with anchor.cache=%s", path, len(done), done.views,
             path)
    return {"cache": str(path), "images": len(done), "views": done.views, "skipped": done.meta.get("skipped", 0)}
