"""``binder.training.train`` on the real Hydra config: digits, manifests, resuming, end to end."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import binder
from binder.errors import BinderInputError
import binder.training.tasks as training_module
from binder.training import train
from helpers import SMALL_ENCODER, set_overrides, small_encoder


def bind_overrides(run_dir: Path, *extra: str) -> list:
    return ["modality=audio", *small_encoder("audio"), "trainer.enable_progress_bar=false",
            f"run_dir={run_dir}", *extra]


def test_compose_default_config(compose, tmp_path):
    cfg = compose([f"run_dir={tmp_path}"])
    assert cfg.task == "binder.training.bind" and list(cfg.modality) == ["audio"] and cfg.target == "image"
    assert cfg.data._target_ == "binder.datasets.digits.DigitsDataModule"
    assert cfg.run_dir == str(tmp_path)
    assert cfg.paths.cache == os.environ["BINDER_CACHE"]  # set by conftest for the session
    # The anchor checkpoint lives in the (test) cache, never in ~/.cache.
    assert ".cache/binder" not in str(cfg.anchor.model)
    assert cfg.anchor.model.startswith(f"local-dir:{cfg.paths.cache}")


def test_tiny_anchor(tiny_anchor):
    folder = tiny_anchor["checkpoint"].parent
    assert (folder / "open_clip_config.json").is_file()
    assert (tiny_anchor["run_dir"] / "anchor" / "open_clip_model.safetensors").is_file()
    metrics = json.loads((tiny_anchor["run_dir"] / "metrics.json").read_text())["zero_shot_mnist_heldout"]
    assert metrics["n"] == 2000 and metrics["chance"] == 10.0
    # The recorded zero-shot figure is what the frozen anchor from the folder gives on MNIST 8000-9999.
    from binder.anchor import OpenClipAnchor
    from binder.datasets.digits import CLASSNAMES, TEMPLATES, DigitsConfig, DigitsWorld
    from binder.evaluation import anchor_class_embeddings, topk_accuracy

    anchor = OpenClipAnchor(model=f"local-dir:{folder}")
    world = DigitsWorld(DigitsConfig())
    idx = world.image_indices("test")
    with torch.no_grad():
        emb = torch.cat([anchor.encode_image(torch.stack([anchor.preprocess_image(world.pil(i)) for i in chunk]))
                         for chunk in np.array_split(idx, 8)])
    again = topk_accuracy(emb, world.labels[idx], anchor_class_embeddings(anchor, CLASSNAMES, TEMPLATES))
    assert again["top1"] == pytest.approx(metrics["top1"], abs=0.1)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders


def test_fast_dev_run_digits(compose, tiny_anchor, small_data_root, tmp_path):
    cfg = compose(bind_overrides(tmp_path, f"data.root={small_data_root}", "data.batch_size=8",
                                 "trainer.fast_dev_run=true"))
    metrics = train(cfg)
    model_dir = tmp_path / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert (model_dir / "anchor" / "open_clip_model.safetensors").is_file()  # the anchor is bundled
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["modalities"] == ["audio"] and saved["model_dir"] == str(model_dir.resolve())
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "completed"
    assert saved == json.loads(json.dumps(metrics))
    model = binder.load(model_dir)
    assert set_overrides(model.configs["audio"].encoder) == SMALL_ENCODER
    assert model.configs["audio"].trunk().depth == SMALL_ENCODER["depth"]
    wav = sorted((small_data_root / "fsdd" / "recordings").glob("*.wav"))[0]
    z = model.embed(audio=[wav], progress=False, device="cpu")["audio"]
    assert z.shape == (1, 128) and torch.isfinite(z).all()

    # Fine-tuning from the saved model (init_from) starts from its weights and changes them.
    ft_dir = tmp_path / "finetune"
    train(compose(bind_overrides(ft_dir, f"data.root={small_data_root}", "data.batch_size=8",
                                 "trainer.fast_dev_run=true", f"init_from={model_dir}")))
    tuned = binder.load(ft_dir / "model")
    assert tuned.configs == model.configs
    before, after = model.state_dict(), tuned.state_dict()
    head = "heads.audio.weight"
    assert not torch.equal(before[head], after[head])
    assert (before[head] - after[head]).abs().max() < 0.01  # one AdamW step (lr <= 2e-3), not a fresh init


# ----------------------------------------------------------------------------------------------
# Manifests
# ----------------------------------------------------------------------------------------------

def _mnist_pngs(data_root: Path, folder: Path, n: int) -> list:
    """Save the first ``n`` MNIST test images as PNG files -> [(path, label)]."""
    from binder.datasets.mnist import load_mnist

    images, labels = load_mnist(data_root / "mnist")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"mnist_{i}.png"
        Image.fromarray(images[i], mode="L").save(path)
        out.append((path, int(labels[i])))
    return out


def _manifest_rows(data_root: Path, tmp_path: Path, relative: bool = False) -> list:
    """10 good rows (MNIST PNG + FSDD wav of the same digit) and 2 bad ones."""
    pngs = _mnist_pngs(data_root, tmp_path / "images", 10)
    rows = []
    for i, (png, label) in enumerate(pngs):
        wav = data_root / "fsdd" / "recordings" / f"{label}_jackson_{10 + i}.wav"
        image = png.relative_to(tmp_path) if relative else png
        rows.append({"id": f"r{i}", "image": str(image), "audio": str(wav), "label": str(label)})
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(3000))
    rows.append({"id": "missing", "image": str(pngs[0][0]), "audio": str(tmp_path / "missing.wav"), "label": "1"})
    rows.append({"id": "corrupt", "image": str(pngs[1][0]), "audio": str(corrupt), "label": "2"})
    return rows


def _write_csv(path: Path, rows: list) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "audio", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def spy_datamodule(monkeypatch):
    """Record the DataModule that train() builds."""
    built = []
    real = training_module.build_datamodule

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training_module, "build_datamodule", spy)
    return built


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_fast_dev_run_manifest_skips_bad_rows(fmt, compose, tiny_anchor, data_root, tmp_path, spy_datamodule, caplog):
    rows = _manifest_rows(data_root, tmp_path, relative=fmt == "jsonl")  # jsonl: relative image paths
    manifest = (_write_csv if fmt == "csv" else _write_jsonl)(tmp_path / f"pairs.{fmt}", rows)
    run_dir = tmp_path / "run"
    cfg = compose(bind_overrides(run_dir, "data=manifest", f"data.path={manifest}", "data.batch_size=4",
                                 "data.num_workers=0", "trainer.fast_dev_run=true"))
    with caplog.at_level(logging.WARNING):
        train(cfg)
    dm = spy_datamodule[-1]
    assert dm.skipped == 2
    assert len(dm.train_sets["audio"]) + len(dm.val_sets["audio"]) == 10
    assert not {r["id"] for r in dm.train_rows["audio"] + dm.val_rows["audio"]} & {"missing", "corrupt"}
    assert dm.classnames == sorted({r["label"] for r in rows[:10]})
    assert "skipped" in caplog.text
    assert binder.load(run_dir / "model").bound_modalities == ["audio"]


def test_manifest_without_validation_skips_unreadable_rows_at_load_time(random_anchor, data_root, tmp_path):
    """validate=false: missing files are still dropped up front; unreadable audio yields None."""
    from binder.datasets.manifest import ManifestDataModule, collate_skipping

    rows = _manifest_rows(data_root, tmp_path)
    manifest = _write_csv(tmp_path / "pairs.csv", rows)
    model = binder.BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}})
    dm = ManifestDataModule(model, ["audio"], "image", path=str(manifest), validate=False, val_fraction=0.0,
                            num_workers=0)
    dm.setup()
    assert dm.skipped == 1  # only the missing file
    ids = [r["id"] for r in dm.train_rows["audio"]]
    train_set = dm.train_sets["audio"]
    bad = ids.index("corrupt")
    assert train_set[bad] is None
    assert train_set.failures["corrupt"] == 1
    good = train_set[ids.index("r0")]
    assert good["audio"].shape == (1, 1, 128, 204) and good["image"].shape == (3, 28, 56)
    batch = collate_skipping([train_set[i] for i in range(len(ids))])
    assert batch["audio"].shape[0] == len(ids) - 1
    assert collate_skipping([None, None]) is None


def test_manifest_with_no_usable_rows(compose, tiny_anchor, tmp_path):
    rows = [{"id": "a", "image": str(tmp_path / "no.png"), "audio": str(tmp_path / "no.wav"), "label": "0"},
            {"id": "b", "image": str(tmp_path / "no2.png"), "audio": str(tmp_path / "no2.wav"), "label": "1"}]
    manifest = _write_csv(tmp_path / "pairs.csv", rows)
    cfg = compose(bind_overrides(tmp_path / "run", "data=manifest", f"data.path={manifest}", "data.num_workers=0",
                                 "trainer.fast_dev_run=true"))
    with pytest.raises(BinderInputError, match="no usable audio rows"):
        train(cfg)
    assert not (tmp_path / "run" / "model").exists()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_manifest_missing_columns_and_file(tmp_path):
    from binder.datasets.manifest import read_manifest

    with pytest.raises(BinderInputError, match="does not exist"):
        read_manifest(tmp_path / "none.csv", "audio")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,sound\na.png,a.wav\n")
    with pytest.raises(BinderInputError, match="audio"):
        read_manifest(bad, "audio")


# ----------------------------------------------------------------------------------------------
# Resuming from a Lightning checkpoint
# ----------------------------------------------------------------------------------------------

def test_resume_from_checkpoint(compose, tiny_anchor, small_data_root, tmp_path):
    common = [f"data.root={small_data_root}", "data.batch_size=8", "+trainer.limit_train_batches=2",
              "eval.zero_shot=false", "trainer.log_every_n_steps=1"]
    first = tmp_path / "first"
    train(compose(bind_overrides(first, *common, "trainer.max_epochs=1")))
    ckpt = first / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2
    assert not [k for k in state["state_dict"] if k.startswith("model.anchor.")]  # frozen anchor left out
    assert set_overrides(state["binder_config"]["modalities"]["audio"]["encoder"]) == SMALL_ENCODER
    first_weights = {k: v.clone() for k, v in state["state_dict"].items()}

    second = tmp_path / "second"
    train(compose(bind_overrides(second, *common, f"ckpt_path={ckpt}", "trainer.max_epochs=2")))
    state2 = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state2["global_step"] == 4 and state2["epoch"] == state["epoch"] + 1  # continued, not restarted
    assert any(not torch.equal(first_weights[k], state2["state_dict"][k]) for k in first_weights)
    # The optimizer state came along: AdamW's step count continued from the first run.
    steps = [s["step"] for s in state2["optimizer_states"][0]["state"].values()]
    assert steps and all(int(s) == 4 for s in steps)
    assert (second / "model" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------
# End to end (slow): the default recipe learns something
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_default_training_meets_target(compose, data_root, tmp_path):
    """The default run from scratch (anchor built too): emergent audio->text top-1 >= 80% (issue #2)."""
    cfg = compose([f"run_dir={tmp_path / 'run'}", f"paths.cache={tmp_path / 'cache'}",
                   "trainer.enable_progress_bar=false"])
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = metrics["zero_shot"]
    assert rows, "no zero-shot rows in metrics.json"
    (row,) = rows.values()
    assert row["n"] == 250  # takes 0-4 of 5 speakers x 10 digits
    assert row["top1"] >= 80.0, row


# ----------------------------------------------------------------------------------------------
# One model, many modalities
# ----------------------------------------------------------------------------------------------

def test_one_run_binds_several_modalities(compose, tiny_anchor, small_data_root, tmp_path):
    cfg = compose(["modality=[audio,depth]", *small_encoder("audio"), *small_encoder("depth"),
                   f"data.root={small_data_root}", "data.batch_size=8", "data.epoch_size=16", "trainer.max_epochs=1",
                   "trainer.log_every_n_steps=1", "trainer.check_val_every_n_epoch=1",
                   "trainer.enable_progress_bar=false",
                   f"run_dir={tmp_path}"])
    assert list(cfg.modality) == ["audio", "depth"]
    metrics = train(cfg)
    assert metrics["modalities"] == ["audio", "depth"]
    assert set(metrics["zero_shot"]) == {"audio->text (emergent)", "depth->text (emergent)"}
    assert metrics["zero_shot"]["depth->text (emergent)"]["n"] == 2000
    model = binder.load(tmp_path / "model")
    assert model.bound_modalities == ["audio", "depth"]
    logs = next((tmp_path / "logs").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    for key in ("train/loss/audio-image", "train/loss/depth-image", "val/loss/audio-image", "val/loss/depth-image"):
        assert key in logs, key
    # Each modality's own data: audio epochs follow the 20 recordings, depth its 16 renders.
    steps = [ln for ln in next((tmp_path / "logs").rglob("metrics.csv")).read_text().splitlines()[1:]]
    assert len(steps) > 0


def test_gradients_are_clipped_per_modality(random_anchor):
    from binder.training.module import BindingModule
    from binder.training.optim import OptimConfig

    model = binder.BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}, "depth": {"encoder": SMALL_ENCODER}})
    module = BindingModule(model, OptimConfig())
    for name, scale in (("audio", 100.0), ("depth", 1e-4)):
        for p in model.modality_parameters(name):
            p.grad = torch.full_like(p, scale)
    norm = lambda name: torch.norm(torch.stack([p.grad.norm() for p in model.modality_parameters(name)]))  # noqa: E731
    depth_before = norm("depth").item()
    assert norm("audio") > 1.0 and depth_before < 1.0
    module.configure_gradient_clipping(None, gradient_clip_val=1.0)
    assert norm("audio").item() == pytest.approx(1.0, rel=1e-4)
    assert norm("depth").item() == pytest.approx(depth_before)  # untouched by audio's large gradients
