"""Many processes, one run: what every rank must agree on, checked before the first step.

Lightning's strategies (``trainer=ddp``, ``trainer=fsdp``) run one process per device, launched
by Lightning itself, ``torchrun`` or SLURM (docs/scale.md). Each process composes its own config
and builds its own data; a rank that differs (other overrides, another manifest on a node's local
disk, another code version) would otherwise train on, or wait in a collective that the others
never reach, until a timeout half an hour later. :class:`RankAgreement` gathers every rank's
config digest and data fingerprint once the process group is up and stops every rank with one
error naming the ranks and what differs. The contrastive loss's all-gather lives in the loss
(:mod:`binder.training.losses`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Dict, List

import lightning as L
from lightning.pytorch.callbacks import Callback

from binder.errors import BinderConfigError

log = logging.getLogger(__name__)

RANK_LOCAL_KEYS = ("run_dir", "resume", "ckpt_path", "hydra")
"""Config keys that may differ between the ranks of one run."""


def config_digest(cfg: Any) -> str:
    """SHA-256 of the resolved config without the keys that may differ per rank."""
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    values = {k: v for k, v in values.items() if k not in RANK_LOCAL_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def disagreements(records: List[Dict[str, Any]]) -> List[str]:
    """What the ranks' records (rank 0's is the reference) differ in, one line each."""
    reference, lines = records[0], []
    for rank, record in enumerate(records[1:], 1):
        for key in sorted(set(reference) | set(record)):
            if reference.get(key) != record.get(key):
                lines.append(f"rank {rank} has another {key} than rank 0 ({_short(record.get(key))} vs "
                             f"{_short(reference.get(key))})")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


class RankAgreement(Callback):
    """At setup, every rank checks that all ranks have the same config and data; on any
    difference every rank raises the same :class:`~binder.errors.BinderConfigError`.

    Args:
        config: This rank's :func:`config_digest`.
    """

    def __init__(self, config: str) -> None:
        self.config = config

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2:
            return
        import torch.distributed as dist

        datamodule = trainer.datamodule
        data = datamodule.fingerprint() if hasattr(datamodule, "fingerprint") else type(datamodule).__name__
        mine = {"config": self.config, "data": data}
        if not (dist.is_available() and dist.is_initialized()):
            return
        records: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(records, mine)
        lines = disagreements(records)
        if lines:
            raise BinderConfigError("the processes of this run disagree, so it stops before training: "
                                    + "; ".join(lines[:4]) + ". Launch every rank with the same overrides, code "
                                    "and data")
        log.info("%d processes agree on the config and the data", len(records))


def fsdp_strategy(**kwargs: Any) -> Any:
    """Lightning's FSDP strategy with one transformer block (:class:`binder.layers.Block`) per
    unit; ``use_orig_params`` lets the frozen anchor's parameters sit beside trainable ones."""
    from lightning.pytorch.strategies import FSDPStrategy

    from binder.layers import Block

    options = {"auto_wrap_policy": {Block}, "use_orig_params": True, **kwargs}
    return FSDPStrategy(**options)
