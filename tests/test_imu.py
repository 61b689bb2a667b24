"""IMU modality: accepted inputs, bad inputs, the window stem, presets and the digits renderer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import binder
from binder.errors import BinderConfigError, BinderInputError
from binder.datasets import render_imu
from binder.modalities.imu import IMUConfig, IMUEncoder, IMUPreprocessor

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_SHAPE = (3, 6, 250)  # 3 clips x 6 channels x 5 s at 50 Hz


def imu_signal(t: np.ndarray) -> np.ndarray:
    """A smooth 6-channel recording at times ``t`` (seconds) -> (T, 6) float32: gravity plus
    slow sines on the accelerometer (m/s^2), slow sines on the gyroscope (rad/s)."""
    freqs = np.array([0.7, 1.1, 1.9, 0.5, 1.3, 2.3])
    x = np.sin(2 * np.pi * freqs[None] * t[:, None] + np.arange(6)[None])
    x[:, :3] = x[:, :3] * 2.0 + np.array([0.0, 0.0, 9.81])
    return x.astype(np.float32)


def regular(seconds: float, rate: float) -> np.ndarray:
    return imu_signal(np.arange(int(round(seconds * rate))) / rate)


def write_csv(path: Path, t: np.ndarray, x: np.ndarray, header: str = "timestamp,ax,ay,az,gx,gy,gz") -> Path:
    rows = [header] + [",".join(f"{v:.9g}" for v in (ti, *xi)) for ti, xi in zip(t, x)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def pre() -> IMUPreprocessor:
    return IMUPreprocessor(IMUConfig())


def digit_one() -> np.ndarray:
    d = np.zeros((28, 28), np.uint8)
    d[4:24, 12:16] = 255
    return d


def digit_zero() -> np.ndarray:
    yy, xx = np.mgrid[:28, :28]
    r = np.sqrt(((yy - 14) / 9.0) ** 2 + ((xx - 14) / 6.0) ** 2)
    return ((np.abs(r - 1) < 0.2) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

def test_imagebind_preset_is_6_by_2000():
    cfg = IMUConfig(preset="imagebind")
    assert (cfg.rate, cfg.num_samples, cfg.temperature) == (400.0, 2000, 0.2)
    x = IMUPreprocessor(cfg)((regular(5.0, 400), 400))
    assert tuple(x.shape) == (3, 6, 2000)
    # No normalisation in ImageBind's preset: a 5 s recording at 400 Hz passes through unchanged.
    torch.testing.assert_close(x[0], torch.from_numpy(regular(5.0, 400).T.copy()))
    trunk = cfg.trunk()
    assert ((trunk.patch, trunk.width, trunk.depth, trunk.heads, trunk.drop_path, trunk.dropout)
            == ((8,), 512, 6, 8, 0.7, 0.5))
    assert trunk.bias_kv and trunk.patch_norm and trunk.logit_scale == 5.0


def test_encoder_honours_overrides():
    enc = IMUEncoder(IMUConfig(encoder={"width": 32, "depth": 1, "heads": 2, "drop_path": 0.0, "patch": 10}))
    assert enc.output_dim == 32 and len(enc.blocks) == 1
    tokens = enc.forward_features(torch.zeros(2, 6, 250))
    assert tuple(tokens.shape) == (2, 1 + 25, 32)
    with pytest.raises(ValueError, match="6, 250"):
        enc(torch.zeros(2, 3, 250))
    with pytest.raises(BinderConfigError, match="stem"):
        IMUConfig(encoder={"stem": "conv"}).trunk()
    with pytest.raises(BinderConfigError, match="preset"):
        IMUConfig(preset="huge")


def test_window_stem_matches_explicit_loop():
    """Token s holds channel c, sample k of window s at position c * window + k (ImageBind's
    unfold + reshape), then the bias-free Linear."""
    torch.manual_seed(0)
    enc = IMUEncoder(IMUConfig(encoder={"patch": 8, "width": 16, "heads": 2, "depth": 1}, clip_duration=1.28))
    x = torch.randn(2, 6, 64)
    out = enc.tokenize(x)  # (N, S, D)
    assert tuple(out.shape) == (2, 8, 16)
    for n in range(2):
        for s in range(8):
            vec = torch.stack([x[n, c, s * 8 + k] for c in range(6) for k in range(8)])  # (48,)
            torch.testing.assert_close(out[n, s], enc.patch_embed.weight @ vec)
    assert enc.patch_embed.bias is None


# ----------------------------------------------------------------------------------------------
# Accepted inputs
# ----------------------------------------------------------------------------------------------

def test_layouts_and_tensors_agree(pre):
    x = regular(3.0, 100)  # (T, 6)
    ref = pre((x, 100))
    assert tuple(ref.shape) == TINY_SHAPE and ref.dtype == torch.float32
    torch.testing.assert_close(pre((x.T.copy(), 100)), ref)
    torch.testing.assert_close(pre(torch.from_numpy(x), sample_rate=100), ref)
    torch.testing.assert_close(pre(torch.from_numpy(x.T.copy()).double(), sample_rate=100.0), ref)
    # Normalised: accelerometer in g (gravity ~1 on z), gyroscope in rad/s.
    assert abs(float(ref[0, 2, :100].mean()) - 1.0) < 0.1


def test_csv_irregular_timestamps_match_array(pre, tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(400) / 100 + rng.uniform(-0.003, 0.003, 400)  # ~100 Hz with jitter
    t[0] = 0.0
    from_csv = pre(write_csv(tmp_path / "imu.csv", t, imu_signal(t)))
    from_array = pre((regular(4.0, 100), 100))
    assert tuple(from_csv.shape) == TINY_SHAPE
    torch.testing.assert_close(from_csv[..., :195], from_array[..., :195], atol=0.03, rtol=0)
    torch.testing.assert_close(from_csv, from_array, atol=0.1, rtol=0)  # the last samples: edge effects
    # Named columns in another order are put back in acc x/y/z, gyro x/y/z order.
    shuffled = imu_signal(t)[:, [3, 0, 4, 1, 5, 2]]
    path = write_csv(tmp_path / "named.csv", t, shuffled, "time,gyro_x,acc_x,gyro_y,acc_y,gyro_z,acc_z")
    torch.testing.assert_close(pre(str(path)), from_csv)


def test_numpy_files(pre, tmp_path):
    x = regular(2.0, 100)
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", samples=x.T, sample_rate=100)
    ref = pre((x, 100))
    torch.testing.assert_close(pre(tmp_path / "a.npy", sample_rate=100), ref)
    torch.testing.assert_close(pre(tmp_path / "b.npz"), ref)


def test_lengths_and_rates_batch(pre):
    items = [(regular(1.0, 50), 50), (regular(12.0, 200), 200), (regular(3.3, 97.5), 97.5), (regular(0.02, 100), 100)]
    batch = torch.stack([pre(x) for x in items])
    assert tuple(batch.shape) == (4, *TINY_SHAPE) and torch.isfinite(batch).all()


def test_resampling_keeps_content(pre):
    ref = pre((regular(4.0, 50), 50))
    for rate in (100, 400, 33):
        torch.testing.assert_close(pre((regular(4.0, rate), rate))[..., :190], ref[..., :190], atol=0.05, rtol=0)


def test_long_recording_gives_distinct_clips(pre):
    x = pre((regular(30.0, 100), 100))
    assert tuple(x.shape) == TINY_SHAPE
    assert (x[0] - x[1]).abs().mean() > 0.05 and (x[1] - x[2]).abs().mean() > 0.05
    assert tuple(pre((regular(30.0, 100), 100), num_clips=5).shape) == (5, 6, 250)
    torch.manual_seed(0)
    draws = [pre((regular(30.0, 100), 100), train=True) for _ in range(4)]
    assert all(tuple(d.shape) == (1, 6, 250) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_short_recording_is_zero_padded(pre):
    x = pre((regular(2.0, 50), 50))
    assert (x[:, :, 100:] == 0).all() and (x[:, :, :100] != 0).any()


def test_augment_rotates_both_sensors_and_keeps_padding():
    cfg = IMUConfig(augment={"rotation_deg": 30.0, "time_stretch": 0.0, "max_shift": 0.0, "noise": 0.0})
    x = IMUPreprocessor(cfg)((regular(2.0, 50), 50))[0]  # (6, 250), 100 valid samples
    torch.manual_seed(0)
    y = binder.get_modality("imu").augment_cls(cfg)(x.clone())
    assert y.shape == x.shape and not torch.allclose(x, y)
    for sensor in (slice(0, 3), slice(3, 6)):  # a rotation keeps each sensor's vector norms
        torch.testing.assert_close(y[sensor, :100].norm(dim=0), x[sensor, :100].norm(dim=0))
    assert (y[:, 100:] == 0).all()
    z = binder.get_modality("imu").augment_cls(IMUConfig())(x.clone())
    assert z.shape == x.shape and (z[:, -20:] == 0).all()


# ----------------------------------------------------------------------------------------------
# Bad inputs raise BinderInputError naming the input
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, content, match",
    [
        ("missing.csv", None, "does not exist"),
        ("empty.csv", "", "empty"),
        ("header.csv", "t,ax,ay,az,gx,gy,gz\n", "empty"),
        ("cols.csv", "t,ax,ay,az,gx,gy\n0,1,2,3,4,5\n0.1,1,2,3,4,5\n", "6 value columns"),
        ("notime.csv", "a,b,c,d,e,f,g\n0,1,2,3,4,5,6\n0.1,1,2,3,4,5,6\n", "time column"),
        ("text.csv", "t,ax,ay,az,gx,gy,gz\n0,1,2,x,4,5,6\n", "numbers"),
        ("ragged.csv", "t,ax,ay,az,gx,gy,gz\n0,1,2,3,4,5,6\n0.1,1,2\n", "numbers"),
        ("back.csv", "t,ax,ay,az,gx,gy,gz\n0.2,1,2,3,4,5,6\n0.1,1,2,3,4,5,6\n", "decrease"),
        ("nan.csv", "t,ax,ay,az,gx,gy,gz\n0,1,2,3,4,5,6\n0.1,1,nan,3,4,5,6\n", "NaN"),
        ("corrupt.npy", b"\x93NUMPY garbage" * 10, "not a readable numpy"),
        ("corrupt.npz", b"PK\x03\x04 garbage" * 10, "not a readable numpy"),
        ("binary.csv", b"\xff\xfe\x00\x81" * 100, "CSV"),
        ("data.wav", b"RIFF", ".csv"),
    ],
)
def test_bad_files(pre, tmp_path, name, content, match):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(BinderInputError, match=match) as err:
        pre(path, sample_rate=100)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "samples, rate, match",
    [
        (np.zeros((0, 6), np.float32), 100, "empty"),
        (np.full((100, 6), np.nan, np.float32), 100, "NaN"),
        (np.where(np.eye(100, 6) > 0, np.inf, 0).astype(np.float32), 100, "infinite"),
        (np.zeros((100, 3), np.float32), 100, "6 channels"),
        (np.zeros(600, np.float32), 100, "6 channels"),
        (np.zeros((6, 6), np.float32), 100, "ambiguous"),
        (np.ones((100, 6), bool), 100, "dtype"),
        (np.ones((100, 6), np.complex64), 100, "dtype"),
        ([[0.0] * 6] * 10, 100, "numpy array"),
        (np.zeros((100, 6), np.float32), 0, "sample rate"),
        (np.zeros((100, 6), np.float32), float("nan"), "sample rate"),
        (np.zeros((100, 6), np.float32), None, "sample rate"),
    ],
    ids=["empty", "nan", "inf", "3ch", "1d", "6x6", "bool", "complex", "list", "rate0", "ratenan", "norate"],
)
def test_bad_arrays(pre, samples, rate, match):
    with pytest.raises(BinderInputError, match=match) as err:
        pre((samples, rate))
    assert "imu input" in str(err.value)


def test_npy_without_rate_and_bad_tensor(pre, tmp_path):
    np.save(tmp_path / "a.npy", regular(1.0, 100))
    with pytest.raises(BinderInputError, match="sample rate") as err:
        pre(tmp_path / "a.npy")
    assert "a.npy" in str(err.value)
    with pytest.raises(BinderInputError, match="NaN"):
        pre(torch.full((6, 50), float("nan")), sample_rate=50)


# ----------------------------------------------------------------------------------------------
# The digits-world renderer
# ----------------------------------------------------------------------------------------------

def test_thinning_gives_one_pixel_skeleton():
    skel = render_imu._thin(digit_one() > 100)
    assert skel.sum() > 10 and (skel.sum(1) <= 2).all()  # a vertical bar thins to a line


def test_render_shape_dtype_determinism():
    samples, rate = render_imu.render(digit_one(), np.random.default_rng(3))
    assert rate == 100 and samples.dtype == np.float32 and samples.ndim == 2 and samples.shape[1] == 6
    assert 1.4 <= samples.shape[0] / rate <= 4.0
    again, _ = render_imu.render(digit_one(), np.random.default_rng(3))
    np.testing.assert_array_equal(samples, again)
    other, _ = render_imu.render(digit_one(), np.random.default_rng(4))
    assert other.shape != samples.shape or not np.allclose(other, samples)
    x = IMUPreprocessor(IMUConfig())((samples, rate))  # the renderer's item is a preprocessor input
    assert tuple(x.shape) == TINY_SHAPE


def test_different_digits_give_different_signals():
    a, _ = render_imu.render(digit_one(), np.random.default_rng(0))
    b, _ = render_imu.render(digit_zero(), np.random.default_rng(0))
    n = min(len(a), len(b))
    assert np.abs(a[:n] - b[:n]).mean() > 0.1


def test_render_magnitudes_are_plausible():
    acc_norms, gyro_peaks, acc_peaks = [], [], []
    for seed in range(20):
        digit = digit_one() if seed % 2 else digit_zero()
        x, _ = render_imu.render(digit, np.random.default_rng(seed))
        acc_norms.append(np.linalg.norm(x[:, :3], axis=1).mean())
        acc_peaks.append(np.abs(x[:, :3]).max())
        gyro_peaks.append(np.abs(x[:, 3:]).max())
    assert abs(np.mean(acc_norms) - 9.81) < 0.5  # gravity dominates the mean specific force
    assert max(acc_peaks) < 4 * 9.81 and max(gyro_peaks) < 10.0  # hand motion, not impacts
    assert min(gyro_peaks) > 0.05  # the device does rotate
