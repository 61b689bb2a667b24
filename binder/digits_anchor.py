"""The offline default anchor: a small open_clip CLIP trained on MNIST captions, then frozen.

There are no public CLIP weights offline, so binder trains its own anchor: the ``binder-digits``
open_clip config (registered with open_clip from ``binder/model_configs``) trained on MNIST
instances below ``mnist_test_from`` against captions from many templates (class names are the
words zero..nine), with multi-positive InfoNCE. It is saved in open_clip's folder format
(``open_clip_config.json`` + ``open_clip_model.safetensors``), so ``open_clip.create_model(
"local-dir:<folder>")`` and ``create_model("binder-digits", pretrained=<file>)`` both load it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict

import lightning as L
from safetensors.torch import save_file
from torchvision import transforms

from binder.anchor import register_open_clip_configs
from binder.anchor_training import AnchorTrainingModule
from binder.evaluation import format_table, write_metrics
from binder.config import to_dict
from binder.optim import OptimConfig
from binder_datasets.digits import CLASSNAMES, TEMPLATES, DigitsCaptionDataModule, DigitsConfig

log = logging.getLogger(__name__)


def anchor_folder(anchor_cfg: Dict[str, Any]) -> Path:
    """Folder the anchor's ``pretrained`` checkpoint lives in."""
    return Path(os.path.expanduser(str(anchor_cfg["pretrained"]))).parent


def ensure_anchor(anchor_cfg: Any) -> Dict[str, Any]:
    """Return the anchor config as a dict, training the anchor first if it has a ``build``
    recipe and its checkpoint does not exist yet."""
    cfg = to_dict(anchor_cfg)
    build, pretrained = cfg.get("build"), cfg.get("pretrained")
    if build and pretrained and not Path(os.path.expanduser(str(pretrained))).is_file():
        log.info("anchor checkpoint %s not found: training the digits anchor first", pretrained)
        train_anchor(cfg, None)
    return cfg


def _write_open_clip_folder(clip: Any, model_name: str, folder: Path, metrics: Dict[str, Any]) -> None:
    import open_clip

    model_cfg = open_clip.get_model_config(model_name)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {}, "binder": {"zero_shot": metrics}}
    state = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))


def _publish(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place, replacing an older one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, dest)


def train_anchor(anchor_cfg: Any, run_dir: "Path | None") -> Dict[str, Any]:
    """Train the digits anchor per ``anchor_cfg.build``; freeze it into its ``pretrained`` folder.

    Returns the held-out zero-shot metrics; also writes them (and a copy of the anchor) under
    ``run_dir`` when given.
    """
    import open_clip

    cfg = to_dict(anchor_cfg)
    build = cfg["build"]
    register_open_clip_configs()
    clip, _, preprocess = open_clip.create_model_and_transforms(cfg["model"], pretrained=None)
    tokenizer = open_clip.get_tokenizer(cfg["model"])
    augment = transforms.RandomAffine(degrees=build["rotate"], translate=(build["translate"],) * 2,
                                      scale=(1 - build["scale"], 1 + build["scale"])) if build["augment"] else None
    data = DigitsCaptionDataModule(DigitsConfig(root=build.get("root"), mnist_test_from=build["mnist_test_from"]),
                                   preprocess, tokenizer, build["batch_size"], augment)
    optim = OptimConfig(lr=build["lr"], weight_decay=build["weight_decay"], betas=(0.9, 0.98),
                        warmup_epochs=build["warmup_epochs"])
    module = AnchorTrainingModule(clip, tokenizer, optim, CLASSNAMES, TEMPLATES)
    trainer = L.Trainer(max_epochs=build["epochs"], accelerator="auto", devices=1, gradient_clip_val=1.0,
                        logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                        limit_train_batches=build.get("limit_train_batches") or 1.0,
                        default_root_dir=str(run_dir) if run_dir else None)
    trainer.fit(module, datamodule=data)
    if trainer.interrupted:
        raise KeyboardInterrupt("anchor training was interrupted; nothing was saved")
    metrics = {"anchor": cfg["model"], "zero_shot_mnist_heldout": module.zero_shot}
    log.info("\n%s", format_table({"image->text (anchor)": module.zero_shot},
                                  "Digits anchor: zero-shot on held-out MNIST (%)"))
    dest = anchor_folder(cfg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _write_open_clip_folder(clip.eval(), cfg["model"], tmp, module.zero_shot)
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("anchor:  %s", dest)
    if run_dir is not None:
        shutil.copytree(dest, run_dir / "anchor", dirs_exist_ok=True)
        log.info("metrics: %s", write_metrics(run_dir / "metrics.json", metrics))
    return metrics
