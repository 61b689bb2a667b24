"""The supervised reference: the same encoder trained with a linear classifier on class labels.

ImageBind (arXiv 2305.05665, Table 2) reports emergent zero-shot next to specialist supervised
models; binder's benchmark trains the *same* encoder and recipe with a classifier head on the
labels (cross-entropy) as the upper reference of what the encoder can learn from the data.
Evaluation classifies the same held-out raw inputs as zero-shot does: clip logits averaged.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from binder.evaluation import topk_from_scores
from binder.model import BindModel
from binder.training.optim import OptimConfig, configure_adamw

log = logging.getLogger(__name__)


class SupervisedModule(L.LightningModule):
    """Trains ``model``'s encoder for ``modality`` plus a linear classifier with cross-entropy.

    Args:
        model: A model with the modality's encoder (its anchor is not used for the loss).
        modality: The modality to classify.
        num_classes: Number of classes.
        optim: Optimiser settings (the same as binding uses).
    """

    def __init__(self, model: BindModel, modality: str, num_classes: int, optim: OptimConfig) -> None:
        super().__init__()
        self.model, self.modality, self.optim_cfg = model, modality, optim
        self.encoder = model.encoders[modality]
        self.classifier = nn.Linear(self.encoder.output_dim, num_classes)
        self.strict_loading = False

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a preprocessed batch (N, ...) or multi-clip batch (N, K, ...), clips averaged."""
        clips = x.ndim == self.encoder.input_ndim + 1
        n = x.shape[0]
        if clips:
            x = rearrange(x, "n k ... -> (n k) ...")
        out = self.classifier(self.encoder(x))  # (N * K, C)
        return rearrange(out, "(n k) c -> n k c", n=n).mean(1) if clips else out  # (N, C)

    def _step(self, batch: Dict[Any, Any], stage: str) -> torch.Tensor:
        labels = torch.as_tensor(batch["label"], device=self.device)
        logits = self.logits(batch[self.modality])
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        name = self.modality
        self.log(f"{stage}/loss/{name}-label", loss, batch_size=len(labels), prog_bar=True, sync_dist=stage != "train")
        self.log(f"{stage}/acc/{name}->label", acc, batch_size=len(labels), sync_dist=stage != "train")
        return loss

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> torch.Tensor:
        sub = batch.get(self.modality)  # {modality: pairs} from the data module's train loaders
        return None if sub is None else self._step(sub, "train")

    def validation_step(self, batch: Dict[Any, Any], batch_idx: int) -> None:
        if batch is not None:
            self._step(batch, "val")

    def configure_optimizers(self) -> Dict[str, Any]:
        return configure_adamw(self.trainer, [("encoder", self.encoder), ("classifier", self.classifier)],
                               self.optim_cfg)

    @torch.no_grad()
    def accuracy(self, inputs: Sequence[Any], labels: np.ndarray, batch_size: int = 64) -> Dict[str, float]:
        """Top-1/top-5 (percent) of the classifier on raw held-out inputs, as zero-shot reports them."""
        self.eval()
        pre = self.model.preprocessors[self.modality]
        probs: List[torch.Tensor] = []
        for start in range(0, len(inputs), batch_size):
            x = torch.stack([pre(item) for item in inputs[start : start + batch_size]]).to(self.device)
            probs.append(self.logits(x).softmax(-1).cpu())
        return topk_from_scores(torch.cat(probs), labels)


def run(cfg: Any) -> Dict[str, Any]:
    """``target=label`` (``experiment=supervised``): the same encoder and recipe with a linear
    classifier on the labels, for one modality; writes metrics.json."""
    from pathlib import Path

    from binder.training.checkpoints import resume_checkpoint
    from binder.training.data import build_datamodule
    from binder.evaluation import format_table, write_metrics
    from binder.training import build_model, make_trainer, modalities_of, require_one

    run_dir = Path(cfg.run_dir).resolve()
    modality = require_one(modalities_of(cfg), "the supervised reference")
    ckpt_path = resume_checkpoint(cfg, run_dir)
    model = build_model(cfg)
    datamodule = build_datamodule(cfg.data, model, [modality], target="label")
    datamodule.setup("fit")
    module = SupervisedModule(model, modality, len(datamodule.classnames), OptimConfig(**dict(cfg.optim)))
    trainer = make_trainer(cfg, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    rows = {}
    if not cfg.trainer.get("fast_dev_run"):
        inputs, labels = datamodule.zero_shot_set(modality)
        rows[f"{modality}->label (supervised)"] = module.accuracy(inputs, labels, cfg.eval.batch_size)
        log.info("\n%s", format_table(rows, f"Supervised classification of held-out {modality} (%)"))
    metrics = {"modalities": [modality], "target": "label", "supervised": rows}
    write_metrics(run_dir / "metrics.json", metrics)
    return metrics
