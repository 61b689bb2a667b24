"""Training an open_clip CLIP to serve as an anchor (used for the offline digits anchor).

CLIP's contrastive objective (Radford et al., 2021) with a learnable logit scale, made
label-aware when captions come from class templates: every pair of the same class in the batch
counts as a positive (multi-positive InfoNCE), which removes the same-class false negatives that
make plain CLIP training on 10 classes collapse at larger batch sizes.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import lightning as L
import torch
import torch.nn.functional as F

from binder.evaluation import topk_accuracy
from binder.optim import OptimConfig, configure_adamw
from binder.types import Modality


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor,
                             scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets spread over every same-label pair in the batch."""
    logits = scale * img @ txt.T  # (N, N)
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return (loss_i + loss_t) / 2


class AnchorTrainingModule(L.LightningModule):
    """Trains an open_clip CLIP on (image, caption, label) batches; validates zero-shot accuracy."""

    def __init__(self, clip: Any, tokenizer: Any, optim: OptimConfig, classnames: Sequence[str],
                 templates: Sequence[str]) -> None:
        super().__init__()
        self.clip, self.tokenizer, self.optim_cfg = clip, tokenizer, optim
        self.classnames, self.templates = list(classnames), list(templates)
        self._val: list = []
        self.zero_shot: Dict[str, float] = {}

    def training_step(self, batch: Dict[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        img = F.normalize(self.clip.encode_image(batch[Modality.IMAGE]), dim=-1)
        txt = F.normalize(self.clip.encode_text(batch[Modality.TEXT]), dim=-1)
        scale = self.clip.logit_scale.exp().clamp(max=100)
        loss = multi_positive_clip_loss(img, txt, batch["label"], scale)
        self.log("train/loss/image-text", loss, prog_bar=True, batch_size=img.shape[0])
        self.log("train/logit_scale", scale, batch_size=1)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        return loss

    def _class_embeddings(self) -> torch.Tensor:
        out = []
        for name in self.classnames:
            tok = self.tokenizer([t.format(name) for t in self.templates]).to(self.device)
            out.append(F.normalize(F.normalize(self.clip.encode_text(tok), dim=-1).mean(0), dim=-1))
        return torch.stack(out)

    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._classes = self._class_embeddings()

    def validation_step(self, batch: Dict[Any, torch.Tensor], batch_idx: int) -> None:
        img = F.normalize(self.clip.encode_image(batch[Modality.IMAGE]), dim=-1)
        self._val.append((img.float().cpu(), batch["label"].cpu()))

    def on_validation_epoch_end(self) -> None:
        emb = torch.cat([e for e, _ in self._val])
        labels = torch.cat([l for _, l in self._val]).numpy()
        self.zero_shot = topk_accuracy(emb, labels, self._classes.float().cpu())
        self.log("val/zero_shot/top1", self.zero_shot["top1"], prog_bar=True)

    def configure_optimizers(self) -> Dict[str, Any]:
        return configure_adamw(self.trainer, [("clip", self.clip)], self.optim_cfg)
