"""The offline digits world: held-out splits never overlap, pairs share their label."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

import binder
from binder.errors import BinderConfigError, BinderInputError
from binder.types import Modality
from binder.datasets.digits import DigitsConfig, DigitsDataModule, DigitsWorld
from binder.datasets.fsdd import list_recordings
from binder.datasets.mnist import load_mnist, read_idx


@pytest.fixture(scope="module")
def world(data_root) -> DigitsWorld:
    return DigitsWorld(DigitsConfig(root=str(data_root)))


def test_real_data_shapes(world):
    assert world.images.shape == (10000, 28, 28) and world.images.dtype == np.uint8
    assert sorted(np.unique(world.labels)) == list(range(10))
    assert len(world.recordings) == 2500
    assert {r.speaker for r in world.recordings} == {"george", "jackson", "lucas", "nicolas", "yweweler"}


def test_takes_holdout(world):
    train, test = world.recordings_of("train"), world.recordings_of("test")
    assert {r.take for r in test} == set(range(5))
    assert {r.take for r in train} == set(range(5, 50))
    assert not {r.path for r in train} & {r.path for r in test}
    assert len(train) + len(test) == len(world.recordings)
    assert len(test) == 250


def test_speakers_holdout(data_root):
    w = DigitsWorld(DigitsConfig(root=str(data_root), holdout="speakers", test_speakers=["yweweler"]))
    train, test = w.recordings_of("train"), w.recordings_of("test")
    assert {r.speaker for r in test} == {"yweweler"}
    assert "yweweler" not in {r.speaker for r in train}
    assert len(test) == 500 and len(train) == 2000


def test_bad_holdout_settings(data_root):
    with pytest.raises(BinderConfigError, match="holdout"):
        DigitsConfig(holdout="random")
    w = DigitsWorld(DigitsConfig(root=str(data_root), holdout="speakers", test_speakers=["nobody"]))
    with pytest.raises(BinderInputError, match="test split"):
        w.recordings_of("test")


def test_mnist_holdout(world):
    train, test = world.image_indices("train"), world.image_indices("test")
    assert train.max() < 8000 <= test.min()
    assert len(train) == 8000 and len(test) == 2000
    assert not set(train.tolist()) & set(test.tolist())


def test_datamodule_pairs_share_labels_and_respect_splits(small_data_root, random_anchor):
    """Every (audio, image) pair: the image is an MNIST instance of the recording's digit, from
    the same split; train targets are redrawn on each read, test targets are fixed."""
    model = binder.BindModel(random_anchor, {"audio": {}})
    dm = DigitsDataModule(model, ["audio"], "image", root=str(small_data_root), batch_size=4)
    dm.setup()
    world = dm.world
    train_set, test_set = dm.train_sets["audio"], dm.val_sets["audio"]
    test_ids, test_labels = dm.zero_shot_set("audio")
    assert len(train_set) == 20 and len(test_set) == 10
    assert all(Path(p).stem.endswith("_0") for p in test_ids)  # small root: take 0 is the test take

    # Identify each target image by content among all preprocessed MNIST instances.
    everything = torch.stack([random_anchor.preprocess_image(world.pil(i)) for i in range(len(world.images))])
    flat = everything.flatten(1)

    def mnist_index(img: torch.Tensor) -> int:
        hits = torch.nonzero((flat == img.flatten()).all(1)).flatten().tolist()
        assert hits, "target image is not an MNIST instance"
        labels = {int(world.labels[h]) for h in hits}
        assert len(labels) == 1
        return hits[0]

    for split, ds in (("train", train_set), ("test", test_set)):
        for i in range(len(ds)):
            item = ds[i]
            assert set(item) == {Modality.AUDIO, Modality.IMAGE, "label"}
            j = mnist_index(item[Modality.IMAGE])
            assert int(world.labels[j]) == item["label"], f"{split} pair {i}: image digit != audio digit"
            assert (j >= 8000) == (split == "test"), f"{split} pair {i} uses MNIST instance {j}"
        assert sorted({int(ds[i]["label"]) for i in range(len(ds))}) == list(range(10))

    # The audio side: recordings' digits from the file names.
    assert [int(Path(p).name[0]) for p in test_ids] == list(test_labels)
    # Train: a fresh target on every read; test: the same one every time.
    seen = {mnist_index(train_set[0][Modality.IMAGE]) for _ in range(6)}
    assert len(seen) > 1
    fixed = {mnist_index(test_set[0][Modality.IMAGE]) for _ in range(3)}
    assert len(fixed) == 1
    # Augmentation only on training items: test audio is the same on every read.
    assert train_set.augment is not None and test_set.augment is None
    assert torch.equal(test_set[0][Modality.AUDIO], test_set[0][Modality.AUDIO])
    assert not torch.equal(train_set[0][Modality.AUDIO], train_set[0][Modality.AUDIO])
    batch = next(iter(dm.train_dataloader().iterables["audio"]))
    assert batch[Modality.AUDIO].shape == (4, 1, 1, 128, 204) and batch[Modality.IMAGE].shape == (4, 3, 28, 56)


def test_text_target_pairs_share_labels(small_data_root, random_anchor):
    from binder.datasets.digits import CLASSNAMES, TEMPLATES

    model = binder.BindModel(random_anchor, {"audio": {}})
    dm = DigitsDataModule(model, ["audio"], "text", root=str(small_data_root))
    dm.setup()
    captions = {}
    for t in TEMPLATES:
        for c, name in enumerate(CLASSNAMES):
            captions[tuple(random_anchor.tokenize([t.format(name)])[0].tolist())] = c
    for i in range(len(dm.train_sets["audio"])):
        item = dm.train_sets["audio"][i]
        assert captions[tuple(item[Modality.TEXT].tolist())] == item["label"]


def test_digits_world_rejects_missing_data(tmp_path):
    with pytest.raises(BinderInputError, match="MNIST"):
        DigitsWorld(DigitsConfig(root=str(tmp_path)))
    with pytest.raises(BinderInputError, match="FSDD"):
        list_recordings(tmp_path / "fsdd")


def test_mnist_reader_errors(data_root, tmp_path):
    images, labels = load_mnist(data_root / "mnist")
    assert len(images) == len(labels) == 10000
    raw = gzip.open(data_root / "mnist" / "t10k-labels-idx1-ubyte.gz").read()
    (tmp_path / "trunc").write_bytes(raw[:-10])
    with pytest.raises(BinderInputError, match="truncated"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "magic").write_bytes(b"\x00\x00\x00\x01" + raw[4:])
    with pytest.raises(BinderInputError, match="magic"):
        read_idx(tmp_path / "magic")
