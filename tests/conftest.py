"""Shared fixtures: an isolated cache, the real data root, Hydra composition and a tiny anchor.

* ``BINDER_CACHE`` points at a session temp folder for the whole run, so no test reads or
  writes ``~/.cache/binder``.
* Real data (FSDD + MNIST) is found through ``$BINDER_DATA`` or ``<repo>/../shared/data``;
  tests that need it skip when it is absent. ``small_data_root`` is a temp folder of symlinks
  to a few FSDD recordings (and MNIST) so training tests preprocess seconds, not minutes, of audio.
* ``compose`` composes the packaged Hydra configs (``binder.configs``, what ``binder train`` and
  ``python train.py`` use) after registering the schemas, as the app does.
* ``tiny_anchor`` builds the digits anchor once per session through the real Hydra config
  (``experiment=digits_anchor``) with one epoch of three batches.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest
import torch
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parent.parent

# Recordings in small_data_root: every digit of one speaker, takes 0 (test) and 5, 6 (train).
SMALL_SPEAKER, SMALL_TAKES = "jackson", (0, 5, 6)


def find_data_root() -> Optional[Path]:
    """``$BINDER_DATA`` if set, else ``<repo>/../shared/data``, if it holds FSDD and MNIST."""
    env = os.environ.get("BINDER_DATA")
    candidates = [Path(env)] if env else [REPO_ROOT.parent / "shared" / "data"]
    for c in candidates:
        if (c / "fsdd" / "recordings").is_dir() and (c / "mnist").is_dir():
            return c.resolve()
    return None


@pytest.fixture(scope="session", autouse=True)
def binder_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point ``$BINDER_CACHE`` at a fresh session folder (never ``~/.cache``)."""
    path = tmp_path_factory.mktemp("binder_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BINDER_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def data_root():
    """The real data root (FSDD + MNIST), also exported as ``$BINDER_DATA`` for code that
    resolves it itself; skips the test when it is not available."""
    root = find_data_root()
    if root is None:
        pytest.skip("real data not found: set BINDER_DATA or provide ../shared/data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BINDER_DATA", str(root))
        yield root


@pytest.fixture(scope="session")
def small_data_root(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root of symlinks: MNIST and 30 FSDD recordings (10 test, 20 train)."""
    root = tmp_path_factory.mktemp("small_data")
    (root / "mnist").symlink_to(data_root / "mnist", target_is_directory=True)
    rec = root / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for digit in range(10):
        for take in SMALL_TAKES:
            name = f"{digit}_{SMALL_SPEAKER}_{take}.wav"
            (rec / name).symlink_to(data_root / "fsdd" / "recordings" / name)
    return root


@pytest.fixture(scope="session")
def compose() -> Callable[[List[str]], DictConfig]:
    """``compose(overrides)`` -> the real ``configs/train.yaml`` composed with Hydra."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from binder.training.app import register_configs

    register_configs()

    def _compose(overrides: List[str], return_hydra_config: bool = False) -> DictConfig:
        with initialize_config_module(version_base="1.3", config_module="binder.configs"):
            return hydra_compose(config_name="train", overrides=list(overrides),
                                 return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture(scope="session")
def tiny_anchor(compose, data_root: Path, binder_cache: Path, tmp_path_factory) -> Dict:
    """Train the digits anchor for 3 batches into ``$BINDER_CACHE/anchors/...`` (once per session)."""
    from binder.training import train

    run_dir = tmp_path_factory.mktemp("anchor_run")
    cfg = compose([
        "experiment=digits_anchor", "anchor.build.epochs=1", "anchor.build.limit_train_batches=3",
        "anchor.build.batch_size=32",
        f"anchor.build.root={data_root}", f"run_dir={run_dir}",
    ])
    checkpoint = Path(cfg.anchor.model[len("local-dir:"):]) / "open_clip_model.safetensors"
    assert binder_cache in checkpoint.parents, "the anchor must be written under $BINDER_CACHE"
    assert not checkpoint.exists()
    metrics = train(cfg)
    assert checkpoint.is_file()
    return {"checkpoint": checkpoint, "run_dir": run_dir, "metrics": metrics}


@pytest.fixture(scope="session")
def random_anchor():
    """The ``binder-digits`` open_clip config with random weights (no data needed)."""
    from binder.anchor import OpenClipAnchor

    torch.manual_seed(0)
    return OpenClipAnchor(model="binder-digits")


@pytest.fixture(scope="module")
def audio_model(random_anchor):
    """A BindModel with a random audio encoder on the random anchor, in eval mode (one per module)."""
    from binder import BindModel

    torch.manual_seed(1)
    return BindModel(random_anchor, {"audio": {}}).eval()


@pytest.fixture(scope="session")
def anchor_file(random_anchor, tmp_path_factory) -> Path:
    """A local open_clip checkpoint of the random anchor (exercises anchor bundling)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("anchor_file") / "open_clip_model.safetensors"
    state = {k: v.detach().contiguous().clone() for k, v in random_anchor.model.state_dict().items()}
    save_file(state, str(path))
    return path



@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    """An empty fake Hugging Face Hub on 127.0.0.1 (``servers.FakeHub``; add repositories with
    ``.add(repo_id, revision, folder)``), with ``$HF_ENDPOINT`` and ``$BINDER_CACHE`` pointing at it."""
    from huggingface_hub import constants as hf_constants

    from servers import FakeHub, _hub_handler, _serve

    state = FakeHub()
    server, state.base = _serve(_hub_handler(state))
    monkeypatch.setenv("HF_ENDPOINT", state.base)
    monkeypatch.setenv("BINDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    yield state
    server.shutdown()
    server.server_close()
