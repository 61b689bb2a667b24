"""The anchor cache: built once, equal to the anchor, refused when stale, partial or corrupt,
read by many workers, and training from it never runs the anchor."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from binder.errors import BinderInputError
from binder.training import train
from binder.training.cache import (CACHE_FILE, VECTORS_FILE, AnchorCache, AnchorImages, CacheConfig, CachedImages,
                                   _checksums, build_cache, cache_spec)
from helpers import small_encoder

REPO = Path(__file__).resolve().parent.parent


def _overrides(tmp_path: Path, small_data_root: Path, *extra: str) -> list:
    return ["modality=audio", *small_encoder("audio"), f"data.root={small_data_root}", "data.batch_size=8",
            "trainer.enable_progress_bar=false", f"run_dir={tmp_path / 'run'}", *extra]


@pytest.fixture(scope="module")
def built(compose, tiny_anchor, small_data_root, tmp_path_factory):
    """`binder cache`'s task on the digits world with the tiny anchor, float32 vectors."""
    tmp = tmp_path_factory.mktemp("anchor_cache")
    cfg = compose(_overrides(tmp, small_data_root, "task=binder.training.tasks.cache", f"anchor.cache={tmp / 'c'}",
                             "cache.dtype=float32", "cache.part_size=4000", "cache.num_workers=0"))
    result = train(cfg)
    return {"path": tmp / "c", "result": result, "cfg": cfg, "tmp": tmp}


def _model_and_data(compose, cfg):
    from binder.training.data import build_datamodule
    from binder.training.tasks import build_model

    model = build_model(cfg)
    return model, build_datamodule(cfg.data, model, ["audio"], "image")


def test_the_cache_holds_the_anchors_embeddings(built, compose):
    assert built["result"]["images"] == 10000 and built["result"]["views"] == 1
    model, dm = _model_and_data(compose, built["cfg"])
    images = dm.anchor_images()
    cache = AnchorCache(built["path"], expect=cache_spec(model.anchor, images, CacheConfig()), verify="full")
    keys = ["0", "7", "4321", "9999"]
    with torch.no_grad():
        pixels = torch.stack([model.anchor.preprocess_image(images.load(int(k))) for k in keys])
        want = model.anchor.encode_image(pixels)
    got = torch.stack([cache.get(k) for k in keys])
    assert torch.allclose(got, want, atol=1e-5)
    assert not (built["path"].parent / ".c.parts").exists()  # parts removed once merged


def test_stale_partial_and_corrupt_caches_are_refused(built, compose, tmp_path, random_anchor):
    import shutil

    model, dm = _model_and_data(compose, built["cfg"])
    images = dm.anchor_images()
    other = cache_spec(random_anchor, images, CacheConfig())  # another anchor
    with pytest.raises(BinderInputError, match="is stale: it was built for other anchor weights"):
        AnchorCache(built["path"], expect=other)
    moved = AnchorImages(images.keys, images.load, "another data digest")
    with pytest.raises(BinderInputError, match="stale: it was built for other data"):
        AnchorCache(built["path"], expect=cache_spec(model.anchor, moved, CacheConfig()))

    copy = tmp_path / "copy"
    shutil.copytree(built["path"], copy)
    (copy / CACHE_FILE).unlink()
    with pytest.raises(BinderInputError, match="is partial: it has no cache.json"):
        AnchorCache(copy)
    shutil.rmtree(copy)
    shutil.copytree(built["path"], copy)
    data = (copy / VECTORS_FILE).read_bytes()
    (copy / VECTORS_FILE).write_bytes(data[: len(data) // 2])  # a truncated copy
    with pytest.raises(BinderInputError, match="partial or corrupt"):
        AnchorCache(copy)
    (copy / VECTORS_FILE).write_bytes(data[:-8] + b"\x00" * 8)  # same size, flipped bytes
    with pytest.raises(BinderInputError, match="is corrupt: its vectors do not match the checksums"):
        AnchorCache(copy)
    # A row that is not a unit vector (checksums recomputed, as a buggy writer would leave it) is caught on read.
    vectors = np.load(copy / VECTORS_FILE, mmap_mode="r+")
    vectors[:] = np.load(built["path"] / VECTORS_FILE)
    vectors[5] = 0
    vectors.flush()
    del vectors
    meta = json.loads((copy / CACHE_FILE).read_text())
    meta["checksums"] = _checksums(copy / VECTORS_FILE)
    (copy / CACHE_FILE).write_text(json.dumps(meta))
    cache = AnchorCache(copy)
    key = np.load(copy / "keys.npy")[5].decode()
    with pytest.raises(BinderInputError, match="corrupt: the embedding of .* has norm 0"):
        cache.get(key)
    with pytest.raises(BinderInputError, match="does not exist: build it with `binder cache`"):
        AnchorCache(tmp_path / "nothing")


def test_loader_workers_read_one_cache(built):
    from torch.utils.data import DataLoader

    cache = AnchorCache(built["path"])
    rows = CachedImages(cache, [str(i) for i in range(64)])
    alone = torch.stack([rows[i] for i in range(64)])
    together = torch.cat(list(DataLoader(rows, batch_size=16, num_workers=2)))
    assert torch.equal(alone, together)


def test_a_killed_build_resumes_its_parts(tmp_path, random_anchor):
    from binder import BindModel

    model = BindModel(random_anchor, {})
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 255, (28, 56), dtype=np.uint8) for _ in range(10)]
    calls = []

    def load(i):
        calls.append(i)
        if len(calls) == 7 and not (tmp_path / "stop").exists():
            (tmp_path / "stop").touch()
            raise KeyboardInterrupt  # killed in the middle of the second part
        return pictures[i]

    images = AnchorImages([f"k{i}" for i in range(10)], load, "digest")
    cfg = CacheConfig(part_size=4, num_workers=0, batch_size=2)
    spec = cache_spec(random_anchor, images, cfg)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "c", model, images, cfg, spec)
    assert sorted(p.name for p in (tmp_path / ".c.parts").glob("part-*")) == ["part-00000.npz"]
    calls.clear()
    build_cache(tmp_path / "c", model, images, cfg, spec)
    assert sorted(calls) == list(range(4, 10))  # the finished part was not embedded again
    assert len(AnchorCache(tmp_path / "c", expect=spec)) == 10


def test_training_from_the_cache_never_runs_the_anchor(built, compose, monkeypatch, small_data_root):
    from binder.anchor import OpenClipAnchor

    def refuse(self, images):
        raise AssertionError("the anchor ran on images in a training step")

    monkeypatch.setattr(OpenClipAnchor, "encode_image", refuse)
    metrics = train(compose(_overrides(built["tmp"] / "t", small_data_root, f"anchor.cache={built['path']}",
                                       "cache.dtype=float32", "trainer.fast_dev_run=true")))
    assert metrics["modalities"] == ["audio"]


def test_the_cached_loss_equals_the_anchors(built, compose):
    from binder.training.module import BindingModule
    from binder.training.optim import OptimConfig

    model, dm = _model_and_data(compose, built["cfg"])
    images = dm.anchor_images()
    cache = AnchorCache(built["path"])
    keys = [str(k) for k in range(0, 8000, 1000)]
    audio = torch.randn(len(keys), 1, 1, 128, 204)
    module = BindingModule(model, OptimConfig())
    module.log = lambda *a, **k: None
    with torch.no_grad():
        pixels = torch.stack([model.anchor.preprocess_image(images.load(int(k))) for k in keys])
        plain = module.pair_loss("audio", {"audio": audio, "image": pixels}, "val")
        targets = torch.stack([cache.get(k) for k in keys])
        cached = module.pair_loss("audio", {"audio": audio, "image_embedding": targets}, "val")
    assert torch.allclose(plain, cached, atol=1e-5)


def test_the_quick_start_default_builds_and_reuses_the_cache(compose, tiny_anchor, small_data_root, tmp_path,
                                                              binder_cache):
    cfg = compose(_overrides(tmp_path, small_data_root, "trainer.max_epochs=2", "+trainer.limit_train_batches=1",
                             "trainer.check_val_every_n_epoch=5", "eval.zero_shot=false", "callbacks=none"))
    assert cfg.anchor.cache == "auto"
    from binder.training.cache import default_path

    model, dm = _model_and_data(compose, cfg)
    path = default_path(binder_cache, cache_spec(model.anchor, dm.anchor_images(), CacheConfig()))
    train(cfg)
    assert (path / CACHE_FILE).is_file()
    stamp = (path / CACHE_FILE).stat().st_mtime_ns
    train(compose(_overrides(tmp_path / "again", small_data_root, "trainer.max_epochs=2",
                             "+trainer.limit_train_batches=1", "eval.zero_shot=false", "callbacks=none")))
    assert (path / CACHE_FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_binder_cache_verify(built, tmp_path):
    import shutil

    ok = subprocess.run([sys.executable, "-m", "binder.cli", "cache", "--verify", str(built["path"])],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "every checksum matches" in ok.stdout
    shutil.copytree(built["path"], tmp_path / "bad")
    with open(tmp_path / "bad" / VECTORS_FILE, "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x01\x02\x03\x04")
    bad = subprocess.run([sys.executable, "-m", "binder.cli", "cache", "--verify", str(tmp_path / "bad")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "is corrupt" in bad.stderr and "Traceback" not in bad.stderr


def test_augmented_views_differ_and_rebuild_the_same(tmp_path, random_anchor):
    from PIL import ImageOps

    from binder import BindModel

    model = BindModel(random_anchor, {})
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 255, (28, 56), dtype=np.uint8) for _ in range(4)]

    def flip_or_not(image):  # a random augmentation drawn from Python's random, seeded per (key, view)
        import random

        return ImageOps.mirror(image) if random.random() < 0.5 else ImageOps.flip(image)

    images = AnchorImages([f"k{i}" for i in range(4)], pictures.__getitem__, "digest")
    cfg = CacheConfig(views=3, augment={"_target_": "builtins.print"}, num_workers=0, dtype="float32")
    spec = cache_spec(random_anchor, images, cfg)
    build_cache(tmp_path / "a", model, images, cfg, spec, augment=flip_or_not)
    build_cache(tmp_path / "b", model, images, cfg, spec, augment=flip_or_not)
    a, b = np.load(tmp_path / "a" / VECTORS_FILE), np.load(tmp_path / "b" / VECTORS_FILE)
    assert a.shape == (4, 3, random_anchor.embed_dim) and np.array_equal(a, b)  # the same views again
    assert any(not np.allclose(a[i, 0], a[i, v]) for i in range(4) for v in (1, 2))  # views differ
    cache = AnchorCache(tmp_path / "a", expect=spec)
    assert {tuple(cache.get("k0").numpy().round(5)) for _ in range(40)} <= {tuple(a[0, v].round(5)) for v in range(3)}
    with pytest.raises(Exception, match="views > 1 needs cache.augment"):
        CacheConfig(views=2)
