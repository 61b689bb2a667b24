"""The one LightningModule for binding (ImageBind's training recipe, arXiv 2305.05665, Table 9).

Trains only the bound encoders and heads against the frozen anchor's embeddings of the paired
image (or, for the text-paired baseline, caption) with symmetric InfoNCE at each modality's
fixed temperature. Several modalities train in one run, each on its own paired data (a training
batch is ``{modality: pairs}``; their losses add up, their parameters are disjoint), with
gradients clipped per modality so that one run equals the separate runs. AdamW (betas 0.9/0.95)
with warmup + cosine. Logs ``{stage}/loss/{x}-{target}``, in-batch retrieval accuracy and the lr.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Optional

import lightning as L
import torch

from binder.model import BindModel
from binder.training.cache import IMAGE_EMBEDDING
from binder.training.data import SKIPPED
from binder.training.losses import SymmetricInfoNCE
from binder.types import IMAGE
from binder.training.optim import OptimConfig, configure_adamw


class BindingModule(L.LightningModule):
    """Binds every bound modality of ``model`` that a batch holds to ``target``.

    Args:
        model: The model; its anchor stays frozen and out of the optimiser and checkpoints.
        optim: Optimiser settings.
        target: The anchor modality the pairs carry: ``image`` (emergent route) or ``text``; pairs
            that carry the cached embedding of their image (``image_embedding``) skip the anchor.
        fused_adamw: AdamW's fused kernels (``speed.fused_adamw``).
    """

    def __init__(self, model: BindModel, optim: OptimConfig, target: str = "image", fused_adamw: bool = False) -> None:
        super().__init__()
        self.model, self.optim_cfg, self.target, self.fused_adamw = model, optim, target, fused_adamw
        self.loss = SymmetricInfoNCE()
        self.device_augments: Dict[str, Any] = {}  # augmentations applied after device features
        self.skipped: Counter = Counter()  # unreadable training samples per modality
        self.strict_loading = False  # checkpoints omit the frozen anchor's weights

    def pair_loss(self, modality: str, batch: Dict[str, Any], stage: str) -> torch.Tensor:
        """InfoNCE of one modality's pairs (logged under ``{stage}/loss/{modality}-{target}``)."""
        cached = batch.get(IMAGE_EMBEDDING) if self.target == IMAGE else None
        target = cached if cached is not None else self.model.encode(self.target, batch[self.target])  # frozen, (N, D)
        emb = self.model.encode(modality, batch[modality])
        terms = self.loss(emb, target, self.model.temperature(modality), (modality, self.target))
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value, batch_size=target.shape[0], add_dataloader_idx=False,
                     prog_bar=name.startswith("loss/") and "->" not in name, sync_dist=stage != "train")
        return terms[f"loss/{modality}-{self.target}"]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Raw clips (``speed.audio_features=device``) become features here: on the device, the
        whole batch at once, then the modality's train-time augmentation per clip."""
        if isinstance(batch, dict):
            for key, value in list(batch.items()):
                if isinstance(value, dict) and "wave" in value and key in self.model.preprocessors:
                    batch[key] = self._features(key, value)
                elif isinstance(value, dict):
                    self.on_after_batch_transfer(value, dataloader_idx)
        return batch

    def _features(self, modality: str, raw: Dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.model.preprocessors[modality].features(raw)  # (B, K, ...)
        augment = self.device_augments.get(modality) if self.training else None
        if augment is not None:
            x = torch.stack([augment(clip[0].clone())[None] for clip in x])  # one clip per pair in training
        return x

    def _readable(self, modality: str, sub: Optional[Dict[str, Any]], stage: str) -> bool:
        """Count the samples a batch left out (unreadable, :data:`SKIPPED`); whether any remain."""
        if sub is None:
            return False
        left_out = sub.pop(SKIPPED, None)
        if left_out is not None and stage == "train":
            self.skipped[modality] += int(left_out)
            self.log("train/skipped", float(sum(self.skipped.values())), batch_size=1, reduce_fx="max")
        return modality in sub

    def on_train_epoch_end(self) -> None:
        end = getattr(self.trainer.datamodule, "end_epoch", None)  # stateful loaders (shards) move on
        if callable(end):
            end()

    def on_train_end(self) -> None:
        """Sum the unreadable samples of every process into :attr:`skipped` (what the run reports)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            names = sorted(self.model.bound_modalities)
            counts = torch.tensor([float(self.skipped[m]) for m in names], device=self.device)
            dist.all_reduce(counts)
            self.skipped = Counter({m: int(c) for m, c in zip(names, counts.tolist()) if c})

    def training_step(self, batch: Dict[str, Optional[Dict[str, Any]]], batch_idx: int) -> Optional[torch.Tensor]:
        losses = [self.pair_loss(m, sub, "train") for m, sub in batch.items() if self._readable(m, sub, "train")]
        if not losses:  # every row of this batch was unreadable (manifest data): skip it
            return None
        total = torch.stack(losses).sum()
        self.log("train/loss", total, batch_size=1)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        return total

    def validation_step(self, batch: Optional[Dict[str, Any]], batch_idx: int, dataloader_idx: int = 0) -> None:
        modality = self.trainer.datamodule.val_modalities[dataloader_idx]
        if self._readable(modality, batch, "val"):
            self.pair_loss(modality, batch, "val")

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
                                    gradient_clip_algorithm: Optional[str] = None) -> None:
        """Clip each modality's gradients on their own (as separate runs would)."""
        if not gradient_clip_val:
            return
        for modality in self.model.bound_modalities:
            params = self.model.modality_parameters(modality)
            if params:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_train_epoch_start(self) -> None:
        """What is frozen also stays in eval mode (no dropout noise, no running statistics moving)."""
        from binder.training.finetune import frozen_modules

        for part in frozen_modules(self.model):
            part.eval()

    def configure_optimizers(self) -> Dict[str, Any]:
        return configure_adamw(self.trainer, [*self.model.encoders.items(), *self.model.heads.items()], self.optim_cfg,
                               fused=self.fused_adamw)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        from binder.io import model_config

        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("model.anchor.")]:
            del state[key]
        checkpoint["binder_config"] = model_config(self.model)
