"""Every bad input is one clear binder error naming it (or, for a truncated WAV, a warning).

The cases a hostile user tried: huge sample values, odd sample and frame rates, empty images,
batch sizes, folders where files belong, truncated files, odd text items, malformed model
configs. Property-based and fuzz tests (test_properties.py, test_fuzz.py) cover the rest.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import binder
from binder.errors import BinderInputError, ModelLoadError
from binder.model import BindModel
from helpers import SMALL_ENCODER, chirp


@pytest.fixture(scope="module")
def model(random_anchor) -> BindModel:
    torch.manual_seed(0)
    mods = ("audio", "depth", "thermal", "imu", "video")
    return BindModel(random_anchor, {m: {"encoder": SMALL_ENCODER} for m in mods}).eval()


def embed(model, **inputs):
    return model.embed(progress=False, **inputs)


# ----------------------------------------------------------------------------------------------
# Values and rates
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1e30, float(np.finfo(np.float32).max), -3e38])
def test_audio_with_huge_finite_values(model, value):
    x = np.full(16000, value, dtype=np.float32)
    x[::2] *= -1
    with pytest.raises(BinderInputError, match="too large to analyse"):
        embed(model, audio=[(x, 16000)])


RATES = [float("nan"), float("inf"), -float("inf"), 0, -16000, "16000", None, True, 16000.5]


@pytest.mark.parametrize("rate", RATES, ids=[repr(r) for r in RATES])
def test_audio_sample_rates(model, rate):
    with pytest.raises(BinderInputError, match="audio input.*(sample rate|needs its sample rate)"):
        embed(model, audio=[(chirp(0.5, 16000), rate)])


@pytest.mark.parametrize("rate", RATES[:-1], ids=[repr(r) for r in RATES[:-1]])
def test_imu_sample_rates(model, rate):
    with pytest.raises(BinderInputError, match="imu input.*sample rate"):
        embed(model, imu=[(np.zeros((200, 6), np.float32), rate)])


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), 0, -4, "4"], ids=["nan", "inf", "zero", "negative", "str"])
def test_video_frame_rates(model, fps):
    frames = np.zeros((8, 16, 16, 3), np.uint8)
    with pytest.raises(BinderInputError, match="video input.*frame rate"):
        embed(model, video=[(frames, fps)] if not isinstance(fps, str) else [frames], sample_rate=fps)


# ----------------------------------------------------------------------------------------------
# Empty and NaN images
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (5, 0)])
def test_empty_images(model, shape):
    with pytest.raises(BinderInputError, match="image"):
        embed(model, image=[Image.new("RGB", shape[::-1])])
    with pytest.raises(BinderInputError, match=r"image array.*H, W >= 1"):
        embed(model, image=[np.zeros((*shape, 3), np.uint8)])
    with pytest.raises(BinderInputError, match="depth input is empty"):
        embed(model, depth=[np.ones(shape, np.float32)])
    with pytest.raises(BinderInputError, match="thermal input is empty"):
        embed(model, thermal=[np.zeros(shape, np.uint8)])


def test_image_arrays(model):
    good = np.random.default_rng(0).uniform(0, 1, (20, 24, 3)).astype(np.float32)
    z = embed(model, image=[good, (good * 255).astype(np.uint8), torch.from_numpy(good).permute(2, 0, 1)])["image"]
    torch.testing.assert_close(z[0], z[2])  # HWC array and CHW tensor: the same picture
    bad = good.copy()
    bad[3, 4, 1] = np.nan
    with pytest.raises(BinderInputError, match="NaN"):
        embed(model, image=[bad])
    with pytest.raises(BinderInputError, match=r"\[0, 1\]"):
        embed(model, image=[good * 255])


# ----------------------------------------------------------------------------------------------
# Batch sizes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8", None])
def test_batch_sizes(model, batch_size):
    with pytest.raises(BinderInputError, match="batch_size must be a positive integer"):
        model.embed(text=["a"], batch_size=batch_size, progress=False)


# ----------------------------------------------------------------------------------------------
# Folders where files belong, truncated files
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality, name", [("audio", "x.wav"), ("image", "x.png"), ("depth", "x.npy"),
                                            ("thermal", "x.png"), ("imu", "x.csv"), ("depth", "x.png")])
def test_a_folder_is_not_a_file(model, tmp_path, modality, name):
    folder = tmp_path / name
    folder.mkdir()
    with pytest.raises(BinderInputError, match=rf"{modality} file .*{name}' is a directory"):
        embed(model, **{modality: [folder]})


def test_a_folder_is_not_a_manifest(tmp_path):
    from binder.datasets.manifest import read_manifest

    with pytest.raises(BinderInputError, match="is a directory"):
        read_manifest(tmp_path, "audio")


def test_empty_frame_folder(model, tmp_path):
    with pytest.raises(BinderInputError, match="holds no image files"):
        embed(model, video=[tmp_path])


def test_truncated_wav_warns_naming_the_file(model, tmp_path, caplog):
    full = tmp_path / "full.wav"
    sf.write(full, chirp(1.0, 16000), 16000, subtype="PCM_16")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        z = embed(model, audio=[truncated])["audio"]
    assert torch.isfinite(z).all()
    assert "truncated.wav" in caplog.text and "is truncated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        embed(model, audio=[full])
    assert "truncated" not in caplog.text


# ----------------------------------------------------------------------------------------------
# Text items
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("items, index, kind", [(["a", None], 1, "NoneType"), ([3, "b"], 0, "int"),
                                               (["a", "b", b"c"], 2, "bytes"), (["a", ["b"]], 1, "list")])
def test_text_items_that_are_not_strings(model, items, index, kind):
    with pytest.raises(BinderInputError, match=f"text input {index} is a {kind}, expected a string"):
        embed(model, text=items)


def test_text_generators_and_arrays_are_lists(model):
    want = embed(model, text=["a dog", "a cat"])["text"]
    torch.testing.assert_close(embed(model, text=(t for t in ["a dog", "a cat"]))["text"], want)
    torch.testing.assert_close(embed(model, text=np.array(["a dog", "a cat"]))["text"], want)
    torch.testing.assert_close(embed(model, text=("a dog", "a cat"))["text"], want)


# ----------------------------------------------------------------------------------------------
# Malformed config.json: one ModelLoadError naming the file and the key
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(random_anchor, tmp_path_factory) -> Path:
    small = BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}})
    return binder.save(small, tmp_path_factory.mktemp("saved") / "model")


def _edit(saved: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    result = edit(config)
    data = result if isinstance(result, bytes) else json.dumps(config if result is None else result).encode()
    (folder / "config.json").write_bytes(data)
    return folder


CONFIG_CASES = {
    "a list": (lambda c: [c], "must hold a JSON object"),
    "random bytes": (lambda c: np.random.default_rng(0).bytes(300), "not valid UTF-8 JSON"),
    "no anchor": (lambda c: c.pop("anchor") and None, "'anchor' must be a JSON object"),
    "no modalities": (lambda c: c.pop("modalities") and None, "'modalities' must be a JSON object"),
    "target_length abc": (lambda c: c["modalities"]["audio"].update(target_length="abc"), "target_length"),
    "num_mel_bins changed": (lambda c: c["modalities"]["audio"].update(num_mel_bins=64), "larger than the input"),
    "target_length changed": (lambda c: c["modalities"]["audio"].update(target_length=100), "wrong shapes"),
    "unknown field": (lambda c: c["modalities"]["audio"].update(colour="red"), "colour"),
    "unknown modality": (lambda c: c["modalities"].update(smell={}), "smell"),
    "unknown anchor kind": (lambda c: c["anchor"].update(kind="python"), "unknown anchor kind 'python'"),
    "anchor settings": (lambda c: c["anchor"].update(__import__="os"), "anchor settings"),
    "newer format": (lambda c: c.update(version=99), "newer binder"),
    "file outside": (lambda c: c["files"].update({"../x": "0" * 64}), "outside the model folder"),
    "no digests": (lambda c: c.pop("files") and None, "'files'"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_malformed_config_json(saved, tmp_path, case):
    edit, match = CONFIG_CASES[case]
    folder = _edit(saved, tmp_path, edit)
    with pytest.raises(ModelLoadError, match=match) as err:
        binder.load(folder)
    assert "config.json" in str(err.value) or "model.safetensors" in str(err.value)


def test_image_arrays_and_tensors_of_uint8_and_float_open_alike():
    """A uint8 tensor is pixels 0-255 like a uint8 array; floats must lie in [0, 1]."""
    from binder.anchor import open_image

    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    as_tensor, as_array = open_image(torch.from_numpy(pixels)), open_image(pixels)
    assert np.array_equal(np.asarray(as_tensor), np.asarray(as_array)) and as_tensor.size == (8, 8)
    assert open_image(torch.from_numpy(pixels).float() / 255).size == (8, 8)
    with pytest.raises(BinderInputError, match=r"must lie in \[0, 1\]"):
        open_image(torch.from_numpy(pixels).float())
