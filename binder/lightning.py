"""The one LightningModule for binding (ImageBind's training recipe, arXiv 2305.05665, Table 9).

Trains only the bound encoders and heads against the frozen anchor's embeddings of the paired
image (or, for the text-paired baseline, caption) with symmetric InfoNCE at each modality's
fixed temperature. AdamW (betas 0.9/0.95) with warmup + cosine; gradient clipping is the
Trainer's. Logs ``{stage}/loss/{x}-{target}``, in-batch retrieval accuracy and the lr.
"""
from __future__ import annotations

from typing import Any, Dict

import lightning as L
import torch

from binder.losses import SymmetricInfoNCE
from binder.model import BindModel
from binder.optim import OptimConfig, configure_adamw
from binder.types import Modality


class BindingModule(L.LightningModule):
    """Binds every bound modality of ``model`` present in a batch to ``target``.

    Args:
        model: The model; its anchor stays frozen and out of the optimiser and checkpoints.
        optim: Optimiser settings.
        target: The anchor modality the pairs carry: ``image`` (emergent route) or ``text``.
    """

    def __init__(self, model: BindModel, optim: OptimConfig, target: Modality = Modality.IMAGE) -> None:
        super().__init__()
        self.model, self.optim_cfg, self.target = model, optim, Modality.parse(target)
        self.loss = SymmetricInfoNCE()
        self.strict_loading = False  # checkpoints omit the frozen anchor's weights

    def _step(self, batch: Dict[Any, torch.Tensor], stage: str) -> torch.Tensor:
        target = self.model.encode(self.target, batch[self.target])  # frozen, (N, D)
        total, bs = 0.0, target.shape[0]
        for modality in self.model.bound_modalities:
            if modality not in batch:
                continue
            emb = self.model.encode(modality, batch[modality])
            terms = self.loss(emb, target, self.model.temperature(modality), (modality.value, self.target.value))
            total = total + terms[f"loss/{modality.value}-{self.target.value}"]
            for name, value in terms.items():
                self.log(f"{stage}/{name}", value, batch_size=bs, prog_bar=name.startswith("loss/") and "->" not in name,
                         sync_dist=stage != "train")
        if not torch.is_tensor(total):
            raise ValueError(f"batch has no bound modality; keys {list(batch)}, model binds {self.model.bound_modalities}")
        self.log(f"{stage}/loss", total, batch_size=bs, sync_dist=stage != "train")
        return total

    def training_step(self, batch: Dict[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch is None:  # every row of this batch was unreadable (manifest data): skip it
            return None
        loss = self._step(batch, "train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        return loss

    def validation_step(self, batch: Dict[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return None if batch is None else self._step(batch, "val")

    def configure_optimizers(self) -> Dict[str, Any]:
        return configure_adamw(self.trainer, [*self.model.encoders.items(), *self.model.heads.items()], self.optim_cfg)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        from binder.io import model_config

        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("model.anchor.")]:
            del state[key]
        checkpoint["binder_config"] = model_config(self.model)
