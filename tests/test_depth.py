"""Depth: accepted inputs, the disparity recipe, bad inputs, presets and the digits renderer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import binder
from binder.errors import BinderConfigError, BinderInputError
from binder.datasets.render_depth import render
from binder.modalities.depth import DepthAugment, DepthConfig, DepthEncoder, DepthPreprocessor

FB = 518.857901 * 0.075  # default focal length x baseline (pixel metres)


@pytest.fixture(scope="module")
def pre() -> DepthPreprocessor:
    return DepthPreprocessor(DepthConfig())


@pytest.fixture(scope="module")
def raw() -> DepthPreprocessor:
    """Unnormalised and uncentred: the output is the disparity itself."""
    return DepthPreprocessor(DepthConfig(mean=0.0, std=1.0, center=False))


def ramp(h: int = 40, w: int = 52) -> np.ndarray:
    """A tilted plane 0.8-1.6 m with a bump: float32 metres."""
    v, u = np.mgrid[0:h, 0:w]
    depth = 0.8 + 0.8 * u / (w - 1) - 0.1 * np.exp(-((u - w / 2) ** 2 + (v - h / 2) ** 2) / 40.0)
    return depth.astype(np.float32)


def digit_ring() -> np.ndarray:
    """A synthetic '0': a ring of stroke pixels, (28, 28) uint8."""
    v, u = np.mgrid[0:28, 0:28]
    r = np.hypot((v - 13.5) / 1.3, u - 13.5)
    return np.where(np.abs(r - 6.5) < 1.6, 255, 0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Accepted inputs
# ----------------------------------------------------------------------------------------------

def test_float_metres_shape_and_sizes(pre):
    outs = [pre(ramp(h, w)) for h, w in [(40, 52), (48, 48), (100, 37), (9, 7)]]
    for x in outs:
        assert x.shape == (1, 1, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.stack(outs).shape == (4, 1, 1, 32, 32)  # different sizes batch together


def test_disparity_known_values(raw):
    depth = np.array([[1.0, 2.0, 0.0, -1.0, np.nan, np.inf, 0.001, 100.0]], dtype=np.float32)
    disp = raw.disparity(raw.metres(depth, "depth input"))
    expected = [FB, FB / 2, 0, 0, 0, FB / 50, FB / 0.01, FB / 50]  # holes 0; clipped to [0.01, 50] m
    np.testing.assert_allclose(disp[0], expected, rtol=1e-5)


def test_constant_depth_end_to_end(raw):
    x = raw(np.full((50, 70), 2.0, dtype=np.float32))
    torch.testing.assert_close(x, torch.full((1, 1, 32, 32), FB / 2))
    ib = DepthPreprocessor(DepthConfig(preset="imagebind"))  # absolute disparity, issue #107 stats
    torch.testing.assert_close(ib(np.full((50, 70), 2.0, dtype=np.float32)),
                               torch.full((1, 1, 224, 224), (FB / 2 - 0.0418) / 0.0295))


def test_tiny_preset_centres_each_map(pre):
    """tiny: each map minus its median valid disparity, holes at that median; distance drops out."""
    assert pre.cfg.inputs.center and (pre.cfg.inputs.mean, pre.cfg.inputs.std) == (0.0, 1.0)
    near, far = ramp(), ramp() + 0.5
    near_x, far_x = pre(near), pre(far)
    assert near_x.abs().max() > 0.5  # the slope and the bump remain
    assert abs(float(near_x.median())) < 0.2 and abs(float(far_x.median())) < 0.2
    holes = near.copy()
    holes[:, :10] = 0.0
    assert pre(holes)[0, 0, 16, 0] == pytest.approx(0.0, abs=0.2)  # a hole reads the median level
    assert (not DepthConfig(preset="imagebind").inputs.center
            and DepthConfig(preset="imagebind", center=True).inputs.center)


def test_png_millimetres_equal_float_metres(pre, tmp_path):
    mm = np.round(ramp() * 1000).astype(np.uint16)
    mm[3:6, 4:9] = 0  # holes
    path = tmp_path / "depth.png"
    Image.fromarray(mm).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit PNG
    from_png = pre(path)
    torch.testing.assert_close(from_png, pre(mm.astype(np.float32) / 1000.0))
    torch.testing.assert_close(from_png, pre(str(path)))
    torch.testing.assert_close(from_png, pre(mm))  # integer arrays are millimetres too


def test_npy_and_tiff_files(pre, tmp_path):
    depth = ramp()
    np.save(tmp_path / "m.npy", depth)
    np.save(tmp_path / "mm.npy", np.round(depth * 1000).astype(np.uint16))
    Image.fromarray(depth).save(tmp_path / "m.tiff")  # 32-bit float TIFF
    expected = pre(depth)
    torch.testing.assert_close(pre(tmp_path / "m.npy"), expected)
    torch.testing.assert_close(pre(tmp_path / "m.tiff"), expected)
    torch.testing.assert_close(pre(tmp_path / "mm.npy"), pre(np.round(depth * 1000) / 1000), atol=1e-5, rtol=0)


def test_tensors_and_channel_layouts(pre):
    depth = ramp()
    expected = pre(depth)
    torch.testing.assert_close(pre(torch.from_numpy(depth)), expected)
    torch.testing.assert_close(pre(torch.from_numpy(depth)[None]), expected)  # (1, H, W)
    torch.testing.assert_close(pre(depth[..., None]), expected)  # (H, W, 1)
    torch.testing.assert_close(pre(depth.astype(np.float64)), expected)


def test_holes_zero_and_nan_agree(raw):
    depth = ramp()
    zeros, nans = depth.copy(), depth.copy()
    zeros[10:20, 10:20] = 0.0
    nans[10:20, 10:20] = np.nan
    torch.testing.assert_close(raw(zeros), raw(nans))
    hole = raw(np.where(np.arange(52)[None] < 26, depth, 0.0).astype(np.float32))
    assert hole[0, 0, 16, -1] == pytest.approx(0.0, abs=1e-3)  # holes read disparity 0
    strict = DepthPreprocessor(DepthConfig(nan_is_missing=False))
    with pytest.raises(BinderInputError, match="NaN") as err:
        strict(nans)
    assert "depth input" in str(err.value)


def test_imagebind_preset():
    cfg = DepthConfig(preset="imagebind")
    x = DepthPreprocessor(cfg)(ramp(480, 640))
    assert x.shape == (1, 1, 224, 224)
    assert (cfg.inputs.mean, cfg.inputs.std) == (0.0418, 0.0295)
    trunk = cfg.trunk()
    assert (trunk.patch, trunk.width, trunk.depth, trunk.heads, trunk.bias_kv) == ((16, 16), 384, 12, 8, True)
    encoder = DepthEncoder(cfg)
    n_params = sum(p.numel() for p in encoder.parameters())
    assert 20e6 < n_params < 23e6  # ImageBind's depth trunk: 21M
    assert encoder.pos_embed.shape == (1, 14 * 14 + 1, 384)


def test_augment_keeps_shape():
    cfg = DepthConfig()
    x = DepthPreprocessor(cfg)(ramp())[0]  # (1, 32, 32)
    torch.manual_seed(0)
    y = DepthAugment(cfg)(x.clone())
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)


# ----------------------------------------------------------------------------------------------
# Bad inputs: one BinderInputError naming the input
# ----------------------------------------------------------------------------------------------

def test_missing_corrupt_and_empty_files(pre, tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    npy = tmp_path / "corrupt.npy"
    npy.write_bytes(b"not an array")
    cases = [(tmp_path / "nope.png", "does not exist"), (tmp_path / "nope.npy", "does not exist"),
             (bad, "not a readable image"), (empty, "not a readable image"), (npy, "not a readable .npy")]
    for path, match in cases:
        with pytest.raises(BinderInputError, match=match) as err:
            pre(path)
        assert str(path) in str(err.value)


def test_rgb_png_is_refused(pre, tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    with pytest.raises(BinderInputError, match="shape") as err:
        pre(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "depth, match",
    [
        (np.full((8, 8), np.nan, dtype=np.float32), "no valid pixel"),
        (np.zeros((8, 8), dtype=np.float32), "no valid pixel"),
        (-np.ones((8, 8), dtype=np.float32), "no valid pixel"),
        (np.zeros((0, 8), dtype=np.float32), "empty"),
        (np.ones((8, 8, 3), dtype=np.float32), "shape"),
        (np.ones((2, 8, 8), dtype=np.float32), "shape"),
        (np.ones((1, 1, 8, 8), dtype=np.float32), "shape"),
        (np.ones((8, 8), dtype=bool), "dtype"),
        (np.ones((8, 8), dtype=np.complex64), "dtype"),
        (np.ones((8, 8), dtype=np.uint8), "8-bit"),
        ([[1.0, 2.0]], "numpy array"),
    ],
    ids=["all-nan", "all-zero", "negative", "empty", "3-channel", "2-channel", "4d", "bool", "complex", "uint8",
         "list"],
)
def test_bad_arrays(pre, depth, match):
    with pytest.raises(BinderInputError, match=match) as err:
        pre(depth)
    assert "depth input" in str(err.value)


def test_bad_tensor(pre):
    with pytest.raises(BinderInputError, match="no valid pixel"):
        pre(torch.full((8, 8), float("nan")))


def test_bad_config():
    with pytest.raises(BinderConfigError, match="preset"):
        DepthConfig(preset="huge")
    with pytest.raises(BinderConfigError, match="min_depth"):
        DepthConfig(min_depth=5.0, max_depth=1.0)
    with pytest.raises(BinderConfigError, match="wdth"):
        DepthConfig(encoder={"wdth": 3}).trunk()


# ----------------------------------------------------------------------------------------------
# The digits-world renderer
# ----------------------------------------------------------------------------------------------

def test_render_shape_range_and_determinism():
    digit = digit_ring()
    a = render(digit, np.random.default_rng(1))
    assert a.shape == (48, 48) and a.dtype == np.float32
    valid = a[a > 0]
    assert 0.3 < valid.min() and valid.max() < 1.2  # metres: tiles at 0.45-0.9 m, tilted
    assert 0 < (a == 0).mean() < 0.2  # some missing pixels, not many
    np.testing.assert_array_equal(a, render(digit, np.random.default_rng(1)))
    assert not np.array_equal(a, render(digit, np.random.default_rng(2)))
    x = binder.get_modality("depth").preprocessor_cls(DepthConfig())(a)
    assert x.shape == (1, 1, 32, 32) and torch.isfinite(x).all()


def test_render_class_only_through_relief():
    """Same draws, different digit: the surface only comes closer where strokes are raised, and
    a blank tile is a plane (up to sensor noise)."""
    digit, blank = digit_ring(), np.zeros((28, 28), dtype=np.uint8)
    for seed in range(5):
        a, b = render(digit, np.random.default_rng(seed)), render(blank, np.random.default_rng(seed))
        both = (a > 0) & (b > 0)
        diff = b[both] - a[both]  # the relief brings the surface towards the camera
        assert (diff >= -1e-6).all() and diff.max() > 0.008
        assert 0.05 < (diff > 0.004).mean() < 0.5  # raised pixels: the strokes, not the whole tile
        v, u = np.nonzero(b > 0)
        design = np.stack([u, v, np.ones_like(u)], 1).astype(np.float64)
        coef, *_ = np.linalg.lstsq(design, b[b > 0], rcond=None)
        assert np.abs(design @ coef - b[b > 0]).std() < 0.004  # blank: a plane + mm noise
