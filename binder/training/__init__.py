"""Training: binding encoders to the frozen anchor with PyTorch Lightning (ImageBind, arXiv
2305.05665, sec. 3), behind ``python train.py`` and ``binder train``.

- :mod:`~binder.training.app`: the Hydra app (:func:`main`), :func:`train` (runs ``cfg.task``,
  records ``status.json``) and the config schemas it stores.
- :mod:`~binder.training.tasks`: :func:`bind`, the default task, and the building blocks recipes
  compose (:func:`build_model`, :func:`make_trainer`, :func:`modalities_of`, ...).
- :mod:`~binder.training.module`: the one LightningModule; :mod:`~binder.training.losses`: the
  symmetric InfoNCE with its all-gather; :mod:`~binder.training.optim`: AdamW with warmup-cosine;
  :mod:`~binder.training.data`: paired data modules; :mod:`~binder.training.checkpoints`:
  resumable checkpoints.
"""
from binder.training.app import main, register_configs, train
from binder.training.tasks import (
    bind,
    build_model,
    check_groups,
    make_trainer,
    modalities_of,
    optim_config,
    require_one,
)

__all__ = ["bind", "build_model", "check_groups", "main", "make_trainer", "modalities_of", "optim_config",
           "register_configs", "require_one", "train"]
