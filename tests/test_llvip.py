"""LLVIP loader: pairing, splits, skipping bad files, and training on the 44 real sample pairs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import binder
from binder.errors import BinderConfigError, BinderInputError
from binder.types import Modality
from binder.datasets.llvip import LLVIPConfig, LLVIPDataModule, find_pairs, llvip_root, recall_at_k
from helpers import SMALL_ENCODER, small_encoder

N_SAMPLES = 44


@pytest.fixture(scope="module")
def llvip_dir(data_root) -> Path:
    root = data_root / "llvip-samples"
    if not (root / "infrared").is_dir():
        pytest.skip("LLVIP samples not found under the data root")
    return root


@pytest.fixture(scope="module")
def thermal_model(random_anchor):
    return binder.BindModel(random_anchor, {"thermal": {"encoder": SMALL_ENCODER}}).eval()


def _datamodule(model, root: Path, **cfg) -> LLVIPDataModule:
    return LLVIPDataModule(model, ["thermal"], "image", root=str(root), **cfg)


def _write_pair(root: Path, name: str, sub: str = "", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for kind, shape in (("visible", (40, 50, 3)), ("infrared", (40, 50, 3))):
        folder = root / kind / sub
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)


# ----------------------------------------------------------------------------------------------
# The 44 real pairs
# ----------------------------------------------------------------------------------------------

def test_real_samples_pairs_and_split(llvip_dir):
    train, val, unpaired = find_pairs(llvip_root(str(llvip_dir)), val_fraction=0.2)
    assert len(train) + len(val) == N_SAMPLES and unpaired == 0
    assert 0 < len(val) < len(train)
    assert all(ir.name == vis.name and ir.parent.name == "infrared" for ir, vis in train + val)
    assert not {ir.name for ir, _ in train} & {ir.name for ir, _ in val}
    again_train, again_val, _ = find_pairs(llvip_dir, val_fraction=0.2)
    assert (again_train, again_val) == (train, val)  # deterministic


def test_default_root_is_data_root(llvip_dir):
    assert llvip_root(None) == llvip_dir.resolve()


def test_real_samples_datamodule(llvip_dir, thermal_model):
    dm = _datamodule(thermal_model, llvip_dir, batch_size=8, validate=False)
    dm.setup()
    assert len(dm.train_pairs) + len(dm.val_pairs) == N_SAMPLES and not dm.skipped
    batch = next(iter(dm.train_dataloader().iterables["thermal"]))
    assert batch[Modality.THERMAL].shape == (8, 1, 1, 32, 32)
    assert batch[Modality.IMAGE].shape == (8, 3, 28, 56)
    (val_loader,) = dm.val_dataloader()
    val = next(iter(val_loader))
    assert val[Modality.THERMAL].shape[0] == len(dm.val_pairs)  # the whole validation set in one batch
    z = thermal_model.encode(Modality.THERMAL, batch[Modality.THERMAL])
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(8))
    pairs = dm.val_pairs[:6]
    recall = recall_at_k(thermal_model, pairs, ks=(1, 6))
    assert recall["n"] == 6 and recall["recall@6"] == 100.0  # 6 candidates: always within the top 6
    emb = thermal_model.embed(thermal=[str(ir) for ir, _ in pairs], image=[str(v) for _, v in pairs], progress=False)
    hits = ((emb["thermal"] @ emb["image"].T).argmax(1) == torch.arange(6)).float().mean().item() * 100
    assert recall["recall@1"] == pytest.approx(hits)


def test_train_fast_dev_run_on_real_samples(compose, tiny_anchor, llvip_dir, tmp_path):
    from binder.training import train

    cfg = compose(["modality=thermal", "data=llvip", f"data.root={llvip_dir}", "data.batch_size=8",
                   "data.validate=false",
                   *small_encoder("thermal"), "trainer.fast_dev_run=2", "trainer.enable_progress_bar=false",
                   f"run_dir={tmp_path}"])
    metrics = train(cfg)
    assert metrics["modalities"] == ["thermal"] and metrics["zero_shot"] == {}
    assert json.loads((tmp_path / "metrics.json").read_text())["modalities"] == ["thermal"]
    model = binder.load(tmp_path / "model")
    files = sorted((llvip_dir / "infrared").glob("*.jpg"))[:3]
    z = model.embed(thermal=files, progress=False, device="cpu")[Modality.THERMAL]
    assert z.shape == (3, model.anchor.embed_dim) and torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    img = model.embed(image=[str(llvip_dir / "visible" / f.name) for f in files], progress=False, device="cpu")
    assert torch.isfinite(F.cosine_similarity(z, img[Modality.IMAGE])).all()


# ----------------------------------------------------------------------------------------------
# Layouts and bad files
# ----------------------------------------------------------------------------------------------

def test_unpaired_and_unreadable_files_are_skipped(tmp_path, thermal_model, caplog):
    for i in range(6):
        _write_pair(tmp_path, f"{i:06d}.jpg", seed=i)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "visible" / "lonely.jpg")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "infrared" / "alone.jpg")
    (tmp_path / "infrared" / "000002.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    (tmp_path / "infrared" / "notes.txt").write_text("not an image")
    dm = _datamodule(thermal_model, tmp_path, val_fraction=0.3)
    dm.setup()
    assert dm.skipped == {"unpaired file": 2, "unreadable": 1}
    assert len(dm.train_pairs) + len(dm.val_pairs) == 5
    assert "000002.jpg" in caplog.text and "counterpart" in caplog.text


def test_unreadable_at_read_time_is_skipped(tmp_path, thermal_model):
    for i in range(3):
        _write_pair(tmp_path, f"{i}.png", seed=i)
    dm = _datamodule(thermal_model, tmp_path, validate=False, val_fraction=0.0, batch_size=3)
    dm.setup()
    (tmp_path / "infrared" / "1.png").write_bytes(b"garbage")
    batch = next(iter(dm.train_dataloader().iterables["thermal"]))
    assert batch[Modality.THERMAL].shape[0] == 2 and dm.train_sets["thermal"].failures["1.png"] == 1


def test_official_layout(tmp_path, thermal_model):
    for i in range(3):
        _write_pair(tmp_path, f"01{i}.jpg", sub="train", seed=i)
    _write_pair(tmp_path, "200.jpg", sub="test", seed=9)
    dm = _datamodule(thermal_model, tmp_path)
    dm.setup()
    assert [ir.name for ir, _ in dm.train_pairs] == ["010.jpg", "011.jpg", "012.jpg"]
    assert [ir.name for ir, _ in dm.val_pairs] == ["200.jpg"]


def test_nothing_usable_is_an_error(tmp_path, thermal_model):
    with pytest.raises(BinderInputError, match="infrared"):
        llvip_root(str(tmp_path))
    (tmp_path / "visible").mkdir()
    (tmp_path / "infrared").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "visible" / "a.jpg")
    with pytest.raises(BinderInputError, match="no usable training pair") as err:
        _datamodule(thermal_model, tmp_path).setup()
    assert str(tmp_path) in str(err.value)


def test_wrong_modality_or_target(random_anchor, thermal_model):
    audio = binder.BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}})
    with pytest.raises(BinderConfigError, match="thermal"):
        LLVIPDataModule(audio, ["audio"], "image")
    with pytest.raises(BinderConfigError, match="text"):
        LLVIPDataModule(thermal_model, ["thermal"], "text")
    with pytest.raises(BinderConfigError, match="val_fraction"):
        LLVIPConfig(val_fraction=1.5)
    with pytest.raises(BinderConfigError, match="batchsize"):
        LLVIPDataModule(thermal_model, ["thermal"], "image", batchsize=3)


def test_composed_config_is_the_dataclass(compose, tmp_path):
    from binder.config import build_dataclass

    cfg = compose(["modality=thermal", "data=llvip", f"run_dir={tmp_path}"])
    assert build_dataclass(LLVIPConfig, cfg.data, "data") == LLVIPConfig()
