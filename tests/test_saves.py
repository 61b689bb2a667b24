"""Saves that survive a kill: a model folder is complete at every instant, and the temporaries of
killed writers are cleaned up by the next save."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import binder
from binder import files
from binder.errors import ModelLoadError
from helpers import SMALL_ENCODER

REPO_ROOT = Path(__file__).resolve().parent.parent

SAVER = """
import sys, torch, binder
from binder.anchor import OpenClipAnchor
torch.manual_seed(int(sys.argv[2]))
model = binder.BindModel(OpenClipAnchor(model="binder-digits"), """ \
"""{"audio": {"encoder": {"depth": 1, "width": 32, "heads": 2}}})
open(sys.argv[3], "w").close()            # ready
while True:
    binder.save(model, sys.argv[1])
"""


def _temps(target: Path) -> list:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def test_sigkill_during_saves_never_leaves_a_broken_model(random_anchor, tmp_path):
    """Kill a process that keeps re-saving the same folder at random moments: the folder always
    loads (complete, digests intact), and the next save removes what the killed ones left."""
    target = tmp_path / "model"
    binder.save(binder.BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}}), target)
    rng, left = random.Random(0), 0
    for i in range(5):
        ready = tmp_path / f"ready{i}"
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target), str(i), str(ready)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not ready.exists():
            assert proc.poll() is None, "the saver died on its own"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.6))  # somewhere inside one of its saves
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = binder.load(target)  # verify=True: every file matches its recorded digest
        assert model.bound_modalities == ["audio"]
        left = max(left, len(_temps(target)))
    binder.save(binder.BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}}), target)
    assert _temps(target) == []  # stale temporaries of dead writers are gone


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    dead = tmp_path / f".model.tmp-{2**22 + 12345}-abc"  # no such process
    live = tmp_path / f".model.tmp-{os.getppid()}-abc"  # the pytest parent process: alive
    other = tmp_path / ".other.tmp-1-x"
    for p in (dead, live, other):
        p.mkdir()
    assert files.clean_stale(target) == 1
    assert not dead.exists() and live.exists() and other.exists()


def test_replacing_without_renameat2_recovers_from_a_kill_between_renames(random_anchor, tmp_path, monkeypatch):
    """Where the atomic exchange is unavailable, the old folder is moved aside first; a writer
    killed right then leaves the model missing for an instant, and the next load puts it back."""
    target = tmp_path / "model"
    first = binder.BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}})
    binder.save(first, target)
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_replace, calls = os.replace, []

    def dies_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # after moving the old folder aside, before moving the new one in
            raise KeyboardInterrupt("killed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", dies_on_second)
    monkeypatch.setattr(files, "_pid_alive", lambda pid: False)  # as if this writer had died
    with pytest.raises(KeyboardInterrupt):
        binder.save(binder.BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}}), target)
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert not target.exists() and any(name.startswith(".model.old-") for name in _temps(target))
    restored = binder.load(target)
    torch.testing.assert_close(restored.state_dict()["heads.audio.weight"], first.state_dict()["heads.audio.weight"])


def test_exchange_replaces_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("new")
    (b / "x").write_text("old")
    if not files._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this file system")
    assert (b / "x").read_text() == "new" and (a / "x").read_text() == "old"


def test_truncated_anchor_and_pickled_anchor_name_the_file(tmp_path, anchor_file):
    from binder.anchor import OpenClipAnchor

    truncated = tmp_path / "open_clip_model.safetensors"
    truncated.write_bytes(anchor_file.read_bytes()[:5000])
    with pytest.raises(ModelLoadError, match=str(truncated)):
        OpenClipAnchor(model="binder-digits", pretrained=str(truncated))
    pickled = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "code": os.getcwd}, pickled)  # a pickle with a callable
    with pytest.raises(ModelLoadError, match="evil.pt"):
        OpenClipAnchor(model="binder-digits", pretrained=str(pickled))
