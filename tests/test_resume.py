"""Runs that survive a kill: periodic atomic checkpoints, resume=true, and a real SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from binder.training.checkpoints import LAST, ResumableCheckpoint, find_run, resume_argv, resume_checkpoint
from binder.errors import BinderConfigError
from helpers import small_encoder

REPO_ROOT = Path(__file__).resolve().parent.parent


class FakeTrainer(SimpleNamespace):
    """What ResumableCheckpoint uses of a Trainer; save_checkpoint writes the step."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(global_step=0, sanity_checking=False, is_global_zero=True, fast_dev_run=False, fail=fail)
        self.saved = []

    def save_checkpoint(self, path, weights_only=None) -> None:
        Path(path).write_text(f"step {self.global_step}" + ("" if not self.fail else " (partial)"))
        if self.fail:
            raise OSError("disk full (simulated)")
        self.saved.append(self.global_step)


def test_checkpoint_every_n_steps_epoch_end_and_minutes(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    cb, trainer = ResumableCheckpoint(tmp_path, every_n_steps=3, every_minutes=10.0), FakeTrainer()
    cb.on_train_start(trainer, None)
    for step in range(1, 8):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, None, step)
    assert trainer.saved == [3, 6]
    cb.on_train_epoch_end(trainer, None)
    assert trainer.saved == [3, 6, 7] and (tmp_path / LAST).read_text() == "step 7"
    trainer.global_step = 8
    clock[0] += 599
    cb.on_train_batch_end(trainer, None, None, None, 8)
    assert trainer.saved[-1] == 7  # 9 min 59 s: not yet
    clock[0] += 2
    cb.on_train_batch_end(trainer, None, None, None, 8)
    assert trainer.saved[-1] == 8  # ten minutes since the last write
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]  # no temporaries left


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    cb = ResumableCheckpoint(tmp_path, every_n_steps=1)
    good = FakeTrainer()
    good.global_step = 5
    cb.save(good)
    bad = FakeTrainer(fail=True)
    bad.global_step = 6
    with pytest.raises(OSError, match="simulated"):
        cb.save(bad)
    assert (tmp_path / LAST).read_text() == "step 5"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]


def test_bad_schedule_is_a_config_error(tmp_path):
    with pytest.raises(BinderConfigError, match="every_n_steps"):
        ResumableCheckpoint(tmp_path, every_n_steps=0)


def test_nothing_to_resume_is_one_error_before_building(compose, tmp_path, monkeypatch):
    import binder.training.tasks as tasks
    from binder.training import train

    monkeypatch.setattr(tasks, "build_model", lambda cfg: pytest.fail("built a model before checking the resume"))
    with pytest.raises(BinderConfigError, match="no checkpoint to resume"):
        train(compose(["resume=true", f"run_dir={tmp_path}"]))
    with pytest.raises(BinderConfigError, match="nope.ckpt"):
        train(compose([f"ckpt_path={tmp_path}/nope.ckpt", f"run_dir={tmp_path}"]))
    assert resume_checkpoint(compose([f"run_dir={tmp_path}"]), tmp_path) is None


def _fake_run(root: Path, name: str, overrides: list, status: str, ckpt: bool = True) -> Path:
    run = root / "2026-11-22" / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (run / "status.json").write_text(json.dumps({"status": status}))
    if ckpt:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / LAST).write_bytes(b"x")
    return run


def test_resume_finds_the_runs_latest_unfinished_folder(tmp_path):
    ours = ["modality=audio", "trainer.max_epochs=3"]
    _fake_run(tmp_path, "10-00-00-audio", ours, "completed")
    killed = _fake_run(tmp_path, "10-05-00-audio", [*ours, "resume=true"], "running")
    _fake_run(tmp_path, "10-06-00-audio", ["modality=audio"], "failed")  # other overrides
    _fake_run(tmp_path, "10-07-00-audio", ours, "failed", ckpt=False)  # nothing to resume
    assert find_run([*ours, "resume=true"], tmp_path) == killed
    argv = resume_argv(["trainer.max_epochs=3", "modality=audio", "resume=true"], tmp_path)
    assert argv[-1] == f"hydra.run.dir={killed}"
    assert resume_argv(["modality=audio"], tmp_path) == ["modality=audio"]  # not asked: unchanged
    with pytest.raises(BinderConfigError, match="no unfinished run"):
        resume_argv(["modality=depth", "ckpt_path=auto"], tmp_path)


# ----------------------------------------------------------------------------------------------
# A real SIGKILL in the middle of an epoch
# ----------------------------------------------------------------------------------------------

def _command(*extra: str) -> list:
    return [sys.executable, str(REPO_ROOT / "train.py"), "modality=audio", *small_encoder("audio"), "data.batch_size=4",
            "trainer.max_epochs=12", "trainer.check_val_every_n_epoch=3", "trainer.log_every_n_steps=1",
            "callbacks.checkpoint.every_n_steps=1", *extra]


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def _final(run: Path) -> dict:
    newest = max((run / "logs").rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)  # a resumed run logs anew
    logs = newest.read_text().splitlines()
    header = logs[0].split(",")
    col = header.index("val/loss/audio-image")
    val = [float(row.split(",")[col]) for row in logs[1:] if row.split(",")[col]]
    return {"step": _step(run / "checkpoints" / LAST), "val_loss": val[-1],
            "status": json.loads((run / "status.json").read_text())["status"]}


def test_sigkill_mid_epoch_then_resume(tiny_anchor, small_data_root, binder_cache, tmp_path):
    """A run killed with SIGKILL mid-epoch resumes with resume=true and ends with the same number
    of optimizer steps as an uninterrupted run, and a validation loss within noise of it."""
    env = {**os.environ, "BINDER_CACHE": str(binder_cache), "BINDER_DATA": str(small_data_root)}
    steps_per_epoch = 20 // 4  # 20 training recordings in batches of 4
    whole = tmp_path / "whole"
    subprocess.run(_command(f"hydra.run.dir={whole}"), check=True, capture_output=True, env=env, cwd=tmp_path)
    reference = _final(whole)
    assert reference["step"] == 12 * steps_per_epoch and reference["status"] == "completed"

    killed = subprocess.Popen(_command(), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, step = time.time() + 300, 0
    while time.time() < deadline:
        ckpts = list((tmp_path / "outputs").glob(f"*/*/checkpoints/{LAST}"))
        if ckpts:
            try:
                step = _step(ckpts[0])
            except Exception:  # being replaced right now
                step = 0
            if step >= 2 * steps_per_epoch + 2 and step % steps_per_epoch:  # inside the third epoch
                break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (run,) = (tmp_path / "outputs").glob("*/*-audio")
    assert json.loads((run / "status.json").read_text())["status"] == "running"  # killed: never marked done
    assert 0 < _step(run / "checkpoints" / LAST) < reference["step"]

    resumed = subprocess.run(_command("resume=true"), capture_output=True, text=True, env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {run}" in resumed.stdout
    assert list((tmp_path / "outputs").glob("*/*-audio")) == [run]  # the same run folder, not a new one
    after = _final(run)
    assert after["status"] == "completed"
    assert after["step"] == reference["step"]
    assert after["val_loss"] == pytest.approx(reference["val_loss"], rel=0.15)
