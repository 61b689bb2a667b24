"""``train(cfg)``: the testable body behind ``python train.py`` (Hydra entry point).

Two tasks: ``bind`` (default) trains one modality's encoder against the frozen anchor, saves the
model and runs emergent zero-shot evaluation; ``anchor`` trains the offline digits anchor (an
open_clip CLIP on MNIST captions) and freezes it into open_clip's folder format.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Dict

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from binder.anchor import build_anchor
from binder.data import build_datamodule
from binder.digits_anchor import ensure_anchor, train_anchor
from binder.evaluation import format_table, write_metrics, zero_shot
from binder.io import load, save
from binder.lightning import BindingModule
from binder.model import BindModel, build_config
from binder.config import to_dict
from binder.optim import OptimConfig
from binder.supervised import SupervisedModule
from binder.types import Modality

log = logging.getLogger(__name__)

# The frozen anchor is in eval mode on purpose; Lightning would warn about it on every run.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")


def build_model(cfg: DictConfig) -> BindModel:
    """The anchor (built first if it is the offline default and missing) plus the bound modality,
    or the saved model named by ``init_from`` (which brings its own anchor) for fine-tuning."""
    modality = Modality.parse(cfg.modality.name)
    if cfg.get("init_from"):
        model = load(cfg.init_from)
        if modality not in model.bound_modalities:
            model.add_modality(modality, build_config(modality, to_dict(cfg.modality)))
        log.info("initialised from %s", cfg.init_from)
        return model
    anchor_cfg = ensure_anchor(cfg.anchor)
    anchor = build_anchor({k: v for k, v in anchor_cfg.items() if k != "build"})
    return BindModel(anchor, {modality: build_config(modality, to_dict(cfg.modality))})


def make_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    """A Lightning Trainer from ``cfg.trainer`` with checkpoints and CSV logs under ``run_dir``."""
    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
    return L.Trainer(**to_dict(cfg.trainer), default_root_dir=str(run_dir), callbacks=[ckpt],
                     logger=CSVLogger(str(run_dir), name="logs"))


def evaluate(model: BindModel, datamodule: Any, modality: Modality, cfg: DictConfig) -> Dict[str, Any]:
    """Emergent zero-shot classification of the held-out set against the anchor's class prompts."""
    if not hasattr(datamodule, "zero_shot_set"):
        return {}
    inputs, labels = datamodule.zero_shot_set()
    if not len(inputs):
        return {}
    result = zero_shot(model, modality, inputs, labels, datamodule.classnames, datamodule.templates,
                       batch_size=cfg.eval.batch_size)
    route = "text-paired" if cfg.partner == "text" else "emergent"
    return {f"{modality.value}->text ({route})": result}


def supervised(cfg: DictConfig) -> Dict[str, Any]:
    """``partner=label``: the same encoder and recipe with a linear classifier on the labels."""
    run_dir = Path(cfg.run_dir).resolve()
    model = build_model(cfg)
    modality = Modality.parse(cfg.modality.name)
    datamodule = build_datamodule(cfg.data, model, modality, partner="label")
    datamodule.setup("fit")
    module = SupervisedModule(model, modality, len(datamodule.classnames), OptimConfig(**to_dict(cfg.optim)))
    trainer = make_trainer(cfg, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    rows = {}
    if not cfg.trainer.get("fast_dev_run"):
        inputs, labels = datamodule.zero_shot_set()
        rows[f"{modality.value}->label (supervised)"] = module.accuracy(inputs, labels, cfg.eval.batch_size)
        log.info("\n%s", format_table(rows, f"Supervised classification of held-out {modality.value} (%)"))
    metrics = {"modality": modality.value, "partner": "label", "supervised": rows}
    log.info("metrics: %s", write_metrics(run_dir / "metrics.json", metrics))
    return metrics


def bind(cfg: DictConfig) -> Dict[str, Any]:
    """Train, save and evaluate one bound modality; return the metrics."""
    if cfg.partner == "label":
        return supervised(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    model = build_model(cfg)
    modality = Modality.parse(cfg.modality.name)
    datamodule = build_datamodule(cfg.data, model, modality, partner=cfg.partner)
    module = BindingModule(model, OptimConfig(**to_dict(cfg.optim)), target=Modality.parse(cfg.partner))
    trainer = make_trainer(cfg, run_dir)
    trainable = [p for part in (model.encoders[modality.value], model.heads[modality.value]) for p in part.parameters()
                 if p.requires_grad]
    if not trainable:  # model has no trainable parameters for this modality (e.g. video mode=pooled)
        log.info("%s has no trainable parameters: skipping training, evaluating only", modality.value)
        datamodule.setup("fit")
    else:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted; no model was saved")
    model_dir = save(model, run_dir / "model")
    rows = evaluate(model, datamodule, modality, cfg) if cfg.eval.zero_shot and not cfg.trainer.get("fast_dev_run") else {}
    metrics = {"modality": modality.value, "partner": cfg.partner, "zero_shot": rows, "model_dir": str(model_dir)}
    metrics_path = write_metrics(run_dir / "metrics.json", metrics)
    if rows:
        log.info("\n%s", format_table(rows, f"Zero-shot classification of held-out {modality.value} (%)"))
    log.info("model:   %s", model_dir)
    log.info("metrics: %s", metrics_path)
    return metrics


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Run the task named by ``cfg.task`` (``bind``, ``anchor`` or ``benchmark``)."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.task == "anchor":
        return train_anchor(cfg.anchor, Path(cfg.run_dir).resolve())
    if cfg.task == "bind":
        return bind(cfg)
    if cfg.task == "benchmark":
        from binder.benchmark import run_benchmark

        return run_benchmark(cfg)
    raise ValueError(f"unknown task {cfg.task!r}; expected 'bind', 'anchor' or 'benchmark'")
