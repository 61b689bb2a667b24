"""A test callback that appends each training step's sample ids to a JSON-lines file, flushed at
once, so a test can see exactly which samples a killed and resumed run consumed; ``kill_at``
SIGKILLs the process right after that step (its checkpoint is written by then)."""
from __future__ import annotations

import json
import os
import signal

from lightning.pytorch.callbacks import Callback


class IdLog(Callback):
    def __init__(self, path: str, kill_at: int = 0) -> None:
        self.path, self.kill_at = path, kill_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        ids = [i for sub in batch.values() if isinstance(sub, dict) for i in sub.get("id", [])]
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": trainer.global_step, "ids": ids}) + "\n")
            fh.flush()
        if self.kill_at and trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
