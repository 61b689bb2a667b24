"""Thermal renderer of the digits world: a warm digit-shaped object seen by an uncooled LWIR camera.

The scene: a digit-shaped object (the MNIST strokes; stroke intensity is the fraction of the
pixel the object covers) sits warmer than its surroundings, e.g. a heated wire bent into the
digit in front of a wall. Per item the process draws

* the scene temperatures: background 275-305 K with a linear gradient of up to 3 K across the
  frame plus a smooth blob field of up to 1 K (uneven walls, sun, heating), the object
  2-12 K warmer than the background behind it;
* the pose: rotation up to 15 degrees, scale 0.95-1.25, shift up to 3 pixels, in a 40 x 50
  (rows x columns, LLVIP's 4:5 aspect) frame;
* the radiance: in-band LWIR radiance ~ T^4 (Stefan-Boltzmann as a band proxy);
* the optics: a Gaussian point-spread function of 0.5-1.3 pixels (diffraction + defocus);
* the microbolometer: residual per-pixel gain non-uniformity after the camera's correction
  (0.1-0.3 %), column fixed-pattern offsets (0-0.3 K equivalent), temporal noise with NETD
  30-100 mK;
* the camera's automatic gain control: a linear stretch of the 0.5-99.5 percentile range to
  the output range, random polarity (white-hot or black-hot), and the output format: an 8-bit
  frame (uint8) or a 16-bit frame (uint16, full range).

The class is carried only by the object's shape. ``render(digit, rng)`` returns the frame, the
raw item the thermal preprocessor accepts from a user. Pure numpy, well under a millisecond.
"""
from __future__ import annotations

import numpy as np

from binder.datasets.render_depth import bilinear
from binder.datasets.sources import SOURCES, DigitsSource

HEIGHT, WIDTH = 40, 50  # rendered frame (rows, columns)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(img, radius, mode="edge")
    rows = sum(t * padded[:, i : i + img.shape[1]] for i, t in enumerate(taps))  # (H + 2r, W)
    return sum(t * rows[i : i + img.shape[0]] for i, t in enumerate(taps))  # (H, W)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights from n_in control points to n_out samples."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(pos.astype(np.int64), n_in - 2)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - (pos - lo)
    m[np.arange(n_out), lo + 1] = pos - lo
    return m


_ROWS, _COLS = _interp_matrix(HEIGHT, 4), _interp_matrix(WIDTH, 5)
_V, _U = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)


def _background(rng: np.random.Generator) -> np.ndarray:
    """Background temperature (H, W) in kelvin: base + linear gradient + smooth blobs."""
    base = rng.uniform(275.0, 305.0)
    gx, gy = rng.uniform(-3.0, 3.0, 2)
    grad = gx * (_U / (WIDTH - 1) - 0.5) + gy * (_V / (HEIGHT - 1) - 0.5)
    coarse = rng.standard_normal((4, 5)) * rng.uniform(0.0, 1.0)  # 4 x 5 control points
    return base + grad + _ROWS @ coarse @ _COLS.T  # (H, W)


def _coverage(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fraction of each pixel covered by the object (H, W): the digit under a random similarity."""
    angle, scale = np.radians(rng.uniform(-15, 15)), rng.uniform(0.95, 1.25)
    dy, dx = rng.uniform(-3, 3, 2)
    y, x = _V - (HEIGHT - 1) / 2 - dy, _U - (WIDTH - 1) / 2 - dx
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    row = cos * y - sin * x + 13.5  # inverse map: frame -> digit pixel
    col = sin * y + cos * x + 13.5
    return bilinear(digit.astype(np.float64) / 255.0, row, col)


def _agc(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Automatic gain control + polarity + output format -> uint8 or uint16 frame."""
    flat = signal.ravel()
    k_lo, k_hi = int(0.005 * (flat.size - 1)), int(0.995 * (flat.size - 1))
    part = np.partition(flat, [k_lo, k_hi])
    lo, hi = part[k_lo], part[k_hi]  # 0.5 and 99.5 percentiles
    span = max(hi - lo, 1e-12)
    margin = rng.uniform(0.0, 0.1, 2) * span
    unit = np.clip((signal - (lo - margin[0])) / (span + margin.sum()), 0.0, 1.0)
    if rng.random() < 0.5:  # black-hot polarity
        unit = 1.0 - unit
    if rng.random() < 0.5:
        return np.round(unit * 255.0).astype(np.uint8)
    return np.round(unit * 65535.0).astype(np.uint16)


def scene(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scene's temperature (H, W) in kelvin: background plus the warm digit-shaped object."""
    return _background(rng) + rng.uniform(2.0, 12.0) * _coverage(digit, rng)


def sensor(temp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optics, microbolometer and AGC: temperature (H, W) -> uint8 or uint16 frame."""
    radiance = (temp / 300.0) ** 4  # band radiance proxy, ~1.33 % per kelvin at 300 K
    per_kelvin = 4 * (temp.mean() / 300.0) ** 3 / 300.0
    radiance = _blur(radiance, rng.uniform(0.5, 1.3))
    gain = 1.0 + rng.standard_normal(radiance.shape) * rng.uniform(0.001, 0.003)
    columns = rng.standard_normal(WIDTH) * rng.uniform(0.0, 0.3) * per_kelvin
    noise = rng.standard_normal(radiance.shape) * rng.uniform(0.03, 0.1) * per_kelvin
    return _agc(radiance * gain + columns[None, :] + noise, rng)


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render MNIST ``digit`` (28, 28) uint8 as a thermal frame (40, 50), uint8 or uint16."""
    return sensor(scene(digit, rng), rng)


SOURCES.register("thermal", DigitsSource(render=render))
