"""Checkpoints a killed run can resume from, and finding them again.

:class:`ResumableCheckpoint` writes one complete Lightning checkpoint (encoder and head weights,
optimizer and schedule state, loop counters) to ``<dirpath>/last.ckpt`` at every epoch end, every
``every_n_steps`` optimizer steps and every ``every_minutes`` minutes of training, so an
out-of-memory kill or a pre-empted node loses at most that much work. Each write goes to a
temporary file beside it and replaces ``last.ckpt`` with one rename: the previous checkpoint
stays whole until the new one is complete.

``resume=true`` (or ``ckpt_path=auto``) resumes the run's latest checkpoint: within a run folder
(``run_dir``) its ``checkpoints/last.ckpt``; from the command line, :func:`resume_argv` first
finds the newest unfinished run folder under ``outputs/`` started with the same overrides and
runs in it again. Nothing to resume is one line and a non-zero exit, before anything is built.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback

from binder.errors import BinderConfigError
from binder.files import temp_sibling

log = logging.getLogger(__name__)

LAST = "last.ckpt"
RESUME_KEYS = ("resume", "ckpt_path")


class ResumableCheckpoint(Callback):
    """Writes ``last.ckpt`` at epoch ends, every N steps and every T minutes, atomically.

    Args:
        dirpath: Folder of ``last.ckpt`` (``<run_dir>/checkpoints``).
        every_n_steps: Also write after every this many optimizer steps (None: never).
        every_minutes: Also write when this many minutes passed since the last write (None: never).
        on_epoch_end: Write at the end of every training epoch.
    """

    def __init__(self, dirpath: "str | Path", every_n_steps: Optional[int] = 100,
                 every_minutes: Optional[float] = 10.0, on_epoch_end: bool = True) -> None:
        if every_n_steps is not None and every_n_steps < 1 or every_minutes is not None and every_minutes <= 0:
            raise BinderConfigError(f"callbacks.checkpoint: every_n_steps must be >= 1 and every_minutes > 0, got "
                                    f"{every_n_steps}, {every_minutes}")
        self.dirpath, self.every_n_steps, self.every_minutes = Path(dirpath), every_n_steps, every_minutes
        self.on_epoch_end = on_epoch_end
        self._last_step = -1
        self._last_time = time.monotonic()

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.dirpath / LAST

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time = time.monotonic()

    def _due(self, step: int) -> bool:
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        by_time = self.every_minutes is not None and time.monotonic() - self._last_time >= 60 * self.every_minutes
        return step != self._last_step and (by_steps or by_time)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.sanity_checking and self._due(trainer.global_step):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_epoch_end and not trainer.sanity_checking:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write the checkpoint through a temporary file and one rename."""
        if trainer.fast_dev_run:
            return self.path
        tmp = temp_sibling(self.path, folder=False) if trainer.is_global_zero else self.path
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # full state; every rank takes part, rank zero writes
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        finally:
            if trainer.is_global_zero and tmp.exists() and tmp != self.path:
                tmp.unlink()
        self._last_step, self._last_time = trainer.global_step, time.monotonic()
        return self.path


# ----------------------------------------------------------------------------------------------
# Resuming
# ----------------------------------------------------------------------------------------------

def wants_resume(cfg: Any) -> bool:
    """Whether the config asks to resume its own run (``resume=true`` or ``ckpt_path=auto``)."""
    return bool(cfg.get("resume")) or str(cfg.get("ckpt_path")) == "auto"


def resume_checkpoint(cfg: Any, run_dir: Path) -> Optional[str]:
    """The checkpoint a run starts from: ``ckpt_path`` if it names a file, ``run_dir``'s
    ``last.ckpt`` when resuming, else None.

    Raises:
        BinderConfigError: the named checkpoint does not exist, or there is nothing to resume.
    """
    if wants_resume(cfg):
        last = run_dir / "checkpoints" / LAST
        if not last.is_file():
            raise BinderConfigError(f"resume=true: no checkpoint to resume in {run_dir} (expected {last}); "
                                    "start the run without resume=true")
        log.info("resuming from %s", last)
        return str(last)
    path = cfg.get("ckpt_path")
    if path and not Path(str(path)).expanduser().is_file():
        raise BinderConfigError(f"ckpt_path={path!r} does not exist; expected a Lightning checkpoint "
                                "(<run>/checkpoints/last.ckpt) or ckpt_path=auto")
    return str(Path(str(path)).expanduser()) if path else None


def _plain(overrides: Sequence[str]) -> List[str]:
    """Overrides without the resume keys and the run folder, in a stable order."""
    drop = (*RESUME_KEYS, "hydra.run.dir")
    return sorted(o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in drop)


def find_run(overrides: Sequence[str], root: Path) -> Optional[Path]:
    """The newest unfinished run folder under ``root`` started with the same ``overrides`` and
    holding a checkpoint."""
    import json

    import yaml

    want, found = _plain(overrides), []
    for status in root.glob("*/*/status.json"):
        run = status.parent
        try:
            done = json.loads(status.read_text()).get("status") == "completed"
            saved = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if not done and (run / "checkpoints" / LAST).is_file() and _plain(saved) == want:
            found.append(run)
    return max(found, key=lambda r: (r / "checkpoints" / LAST).stat().st_mtime) if found else None


def resume_argv(argv: List[str], root: Path = Path("outputs")) -> List[str]:
    """``argv`` with ``hydra.run.dir=<the run to resume>`` added when it asks to resume and names
    no run folder itself.

    Raises:
        BinderConfigError: it asks to resume but no unfinished run with a checkpoint matches.
    """
    keys = {a.split("=", 1)[0].lstrip("+"): a.split("=", 1)[-1] for a in argv if "=" in a and not a.startswith("-")}
    asked = keys.get("resume", "").lower() in ("true", "1", "yes") or keys.get("ckpt_path") == "auto"
    if not asked or "hydra.run.dir" in keys:
        return argv
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    run = find_run(overrides, root)
    if run is None:
        raise BinderConfigError(f"resume=true: no unfinished run under {root.resolve()} started with the same "
                                f"overrides ({' '.join(_plain(overrides)) or 'none'}) has a checkpoint to resume")
    log.info("resuming the run in %s", run)
    return [*argv, f"hydra.run.dir={run}"]
