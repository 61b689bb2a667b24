"""The digits world's tactile sensor: an MNIST digit, as a stamp, pressed onto a taxel grid.

Test and benchmark data for the ``tactile`` modality, kept apart from what the modality is
(:mod:`binder_tactile.tactile`): binder's offline digits world renders tactile maps with
:func:`render`, found through the ``binder.digits_sources`` entry point (:data:`SOURCE`), so
``binder train modality=tactile`` runs offline with nothing else to download.
"""
from __future__ import annotations

import numpy as np

from binder.datasets.sources import DigitsSource

GRID = 32  # rendered taxel grid side
PITCH_MM = 2.0  # taxel pitch (a 64 mm pad)
SENSOR_RANGE_KPA = 200.0  # full scale of the 12-bit read-out
ADC_LEVELS = 4095


def stamp_contact(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indentation profile (GRID, GRID) >= 0 of the stamp under a random pose and an uneven press.

    The stamp's raised strokes are the MNIST digit (intensity = stroke height). Pose: rotation up
    to 20 degrees, 0.8-1.1 taxels per MNIST pixel, a shift of up to 2.5 taxels. An uneven press
    tilts the stamp, so indentation varies by up to +-35 % across it (Winkler foundation: pressure
    proportional to local indentation).
    """
    from scipy.ndimage import map_coordinates

    angle, scale = np.radians(rng.uniform(-20.0, 20.0)), rng.uniform(0.8, 1.1)
    dy, dx = rng.uniform(-2.5, 2.5, 2)
    v, u = np.mgrid[0:GRID, 0:GRID].astype(np.float64) - (GRID - 1) / 2
    y, x = v - dy, u - dx
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    rows, cols = cos * y - sin * x + 13.5, sin * y + cos * x + 13.5  # taxel -> digit pixel
    height = map_coordinates(digit.astype(np.float64) / 255.0, [rows, cols], order=1, cval=0.0)
    slope, direction = rng.uniform(0.0, 0.35), rng.uniform(0.0, 2 * np.pi)
    tilt = slope * (np.sin(direction) * v + np.cos(direction) * u) / (GRID / 2)
    return height * (1.0 + tilt)


def taxel_readout(pressure_kpa: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor effects on a true pressure map: per-taxel gain spread (3-8 %), row/column crosstalk
    of a resistive matrix (0-3 %), read noise (0.2-1 kPa), dead taxels (0-2 %), clipping to
    [0, 200] kPa and 12-bit quantisation."""
    p = pressure_kpa * (1.0 + rng.normal(0.0, rng.uniform(0.03, 0.08), pressure_kpa.shape))
    ghost = rng.uniform(0.0, 0.03)
    p = p + ghost * (p.mean(axis=0, keepdims=True) + p.mean(axis=1, keepdims=True))
    p = p + rng.normal(0.0, rng.uniform(0.2, 1.0), p.shape)
    p[rng.random(p.shape) < rng.uniform(0.0, 0.02)] = 0.0
    step = SENSOR_RANGE_KPA / ADC_LEVELS
    return (np.round(np.clip(p, 0.0, SENSOR_RANGE_KPA) / step) * step).astype(np.float32)


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Press MNIST ``digit`` (28, 28) uint8, as a stamp, onto a 32 x 32 taxel grid -> kPa (32, 32).

    A total force of 3-15 N is shared over the contact in proportion to the local indentation
    (:func:`stamp_contact`); the elastomer skin spreads it (a Gaussian of 0.5-1.2 taxels, force
    conserving); the array reads it out with :func:`taxel_readout`. The class lives only in the
    contact's shape. Pure numpy/scipy, well under a millisecond per map.
    """
    from scipy.ndimage import gaussian_filter

    contact = stamp_contact(digit, rng)
    force_n = rng.uniform(3.0, 15.0)
    taxel_m2 = (PITCH_MM * 1e-3) ** 2
    pressure_pa = force_n * contact / (max(contact.sum(), 1e-6) * taxel_m2)
    pressure_pa = gaussian_filter(pressure_pa, rng.uniform(0.5, 1.2), mode="constant")
    return taxel_readout(pressure_pa / 1000.0, rng)


SOURCE = DigitsSource(render=render)
