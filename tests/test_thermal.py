"""Thermal: accepted inputs (8/16-bit files, arrays, tensors), bad inputs, presets, the renderer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from binder.errors import BinderConfigError, BinderInputError
from binder.datasets.render_thermal import HEIGHT, WIDTH, render, scene
from binder.modalities.thermal import ThermalAugment, ThermalConfig, ThermalEncoder, ThermalPreprocessor


@pytest.fixture(scope="module")
def pre() -> ThermalPreprocessor:
    return ThermalPreprocessor(ThermalConfig())


def frame8(h: int = 40, w: int = 50) -> np.ndarray:
    """An 8-bit frame: a warm blob over a gradient."""
    v, u = np.mgrid[0:h, 0:w]
    img = 60 + 80 * u / (w - 1) + 110 * np.exp(-((u - w / 2) ** 2 + (v - h / 2) ** 2) / 30.0)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def digit_bar() -> np.ndarray:
    """A synthetic '1': a vertical bar, (28, 28) uint8."""
    d = np.zeros((28, 28), dtype=np.uint8)
    d[5:23, 12:16] = 255
    return d


# ----------------------------------------------------------------------------------------------
# Accepted inputs
# ----------------------------------------------------------------------------------------------

def test_shapes_and_sizes(pre):
    outs = [pre(frame8(h, w)) for h, w in [(40, 50), (32, 32), (100, 37), (7, 9)]]
    for x in outs:
        assert x.shape == (1, 1, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.stack(outs).shape == (4, 1, 1, 32, 32)


def test_bit_depth_scaling(pre):
    f8 = frame8()
    expected = pre(f8)
    torch.testing.assert_close(pre(f8.astype(np.uint16) * 257), expected)  # 255 * 257 = 65535
    torch.testing.assert_close(pre(f8.astype(np.float32) / 255.0), expected)
    torch.testing.assert_close(pre(f8.astype(np.int32) * 257), expected)  # PIL's mode "I"
    raw14 = ThermalPreprocessor(ThermalConfig(bits=14))
    torch.testing.assert_close(raw14(np.round(f8 / 255.0 * 16383).astype(np.uint16)), expected, atol=2e-3, rtol=0)
    flat = pre(np.full((40, 50), 255, dtype=np.uint8))
    torch.testing.assert_close(flat, torch.full_like(flat, (1.0 - 0.207) / 0.192))  # scaled to 1, normalised


def test_files_8_and_16_bit(pre, tmp_path):
    f8 = frame8()
    Image.fromarray(f8).save(tmp_path / "a.png")
    Image.fromarray(f8.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    Image.fromarray(f8.astype(np.uint16) * 257).save(tmp_path / "a16.tiff")
    Image.fromarray(np.stack([f8] * 3, -1)).save(tmp_path / "rgb.png")
    expected = pre(f8)
    for name in ("a.png", "a16.png", "a16.tiff", "rgb.png"):
        torch.testing.assert_close(pre(tmp_path / name), expected, msg=name)
    torch.testing.assert_close(pre(str(tmp_path / "a.png")), expected)


def test_three_channels_reduced(pre, tmp_path):
    f8 = frame8()
    torch.testing.assert_close(pre(np.stack([f8] * 3, -1)), pre(f8))  # (H, W, 3)
    torch.testing.assert_close(pre(np.stack([f8] * 3)), pre(f8))  # (3, H, W)
    Image.fromarray(np.stack([f8] * 3, -1)).save(tmp_path / "ir.jpg", quality=95)  # LLVIP-style JPEG
    Image.fromarray(f8).save(tmp_path / "ir_l.jpg", quality=95)
    assert (pre(tmp_path / "ir.jpg") - pre(tmp_path / "ir_l.jpg")).abs().max() < 0.2  # JPEG loss only


def test_tensors(pre):
    f8 = frame8()
    expected = pre(f8)
    torch.testing.assert_close(pre(torch.from_numpy(f8)), expected)
    torch.testing.assert_close(pre(torch.from_numpy(f8)[None]), expected)  # (1, H, W)
    torch.testing.assert_close(pre(torch.from_numpy(f8).float() / 255), expected)


def test_imagebind_preset():
    cfg = ThermalConfig(preset="imagebind")
    x = ThermalPreprocessor(cfg)(frame8(1024, 1280))
    assert x.shape == (1, 1, 224, 224)
    trunk = cfg.trunk()
    assert (trunk.patch, trunk.width, trunk.depth, trunk.heads, trunk.logit_scale) == ((16, 16), 768, 12, 12, 10.0)


def test_tiny_encoder_and_augment():
    cfg = ThermalConfig()
    x = ThermalPreprocessor(cfg)(frame8())  # (1, 1, 32, 32)
    assert ThermalEncoder(cfg)(x).shape == (1, cfg.trunk().width)
    torch.manual_seed(0)
    y = ThermalAugment(cfg)(x[0].clone())
    assert y.shape == x[0].shape and torch.isfinite(y).all() and not torch.equal(y, x[0])


# ----------------------------------------------------------------------------------------------
# Bad inputs: one BinderInputError naming the input
# ----------------------------------------------------------------------------------------------

def test_missing_corrupt_empty_and_rgba_files(pre, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8)).save(rgba)
    cases = [(tmp_path / "nope.png", "does not exist"), (corrupt, "not a readable image"),
             (empty, "not a readable image"), (rgba, "channel")]
    for path, match in cases:
        with pytest.raises(BinderInputError, match=match) as err:
            pre(path)
        assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "frame, match",
    [
        (np.array([[0.1, np.nan]], dtype=np.float32), "NaN"),
        (np.array([[0.1, np.inf]], dtype=np.float32), "infinite"),
        (np.array([[0.1, 300.0]], dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((0, 10), dtype=np.uint8), "empty"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "channel"),
        (np.zeros((8, 8, 4), dtype=np.uint8), "channel"),
        (np.zeros((2, 8, 8, 1), dtype=np.uint8), "channel"),
        (np.full((8, 8), -3, dtype=np.int16), "integer values"),
        (np.ones((8, 8), dtype=bool), "dtype"),
        (np.ones((8, 8), dtype=np.complex64), "dtype"),
        ([[0, 1]], "numpy array"),
    ],
    ids=["nan", "inf", "float-range", "empty", "2-channel", "4-channel", "4d", "negative", "bool", "complex", "list"],
)
def test_bad_arrays(pre, frame, match):
    with pytest.raises(BinderInputError, match=match) as err:
        pre(frame)
    assert "thermal input" in str(err.value)


def test_values_beyond_bit_depth():
    with pytest.raises(BinderInputError, match="14-bit") as err:
        ThermalPreprocessor(ThermalConfig(bits=14))(np.full((8, 8), 20000, dtype=np.uint16))
    assert "thermal input" in str(err.value)
    with pytest.raises(BinderConfigError, match="bits"):
        ThermalConfig(bits=8)


def test_bad_tensor(pre):
    with pytest.raises(BinderInputError, match="NaN"):
        pre(torch.tensor([[0.5, float("nan")]]))


# ----------------------------------------------------------------------------------------------
# The digits-world renderer
# ----------------------------------------------------------------------------------------------

def test_render_shape_dtype_determinism(pre):
    digit = digit_bar()
    frames = [render(digit, np.random.default_rng(s)) for s in range(12)]
    assert all(f.shape == (HEIGHT, WIDTH) for f in frames)
    assert {f.dtype for f in frames} == {np.dtype(np.uint8), np.dtype(np.uint16)}  # both formats occur
    np.testing.assert_array_equal(frames[0], render(digit, np.random.default_rng(0)))
    assert not np.array_equal(frames[0], frames[1])
    for f in frames:
        x = pre(f)
        assert x.shape == (1, 1, 32, 32) and torch.isfinite(x).all()


def test_render_class_only_through_shape():
    """Same draws with and without the digit: the scene differs exactly where the object is (it
    is warmer there and nowhere else), and the frame shows it in either polarity."""
    digit, blank = digit_bar(), np.zeros((28, 28), dtype=np.uint8)
    signs = set()
    for seed in range(10):
        with_digit = scene(digit, np.random.default_rng(seed))
        without = scene(blank, np.random.default_rng(seed))
        warmer = with_digit - without  # kelvin
        assert (warmer >= 0).all() and warmer.max() > 1.5
        assert 0.03 < (warmer > 0.5).mean() < 0.2  # a compact object: the bar, not the frame
        frame = render(digit, np.random.default_rng(seed)).astype(np.float64)
        hot = warmer > 0.5 * warmer.max()
        signs.add(bool(frame[hot].mean() > frame[warmer == 0].mean()))  # white-hot / black-hot
    assert signs == {True, False}
