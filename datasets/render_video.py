"""Digits-world video: a handwritten digit on a card drifting, swinging and zooming in front of a camera.

The process is a single-digit, rotating relative of Moving MNIST (Srivastava et al., "Unsupervised
Learning of Video Representations using LSTMs", ICML 2015): the MNIST instance is printed in
white ink on a dark card that

* drifts across the view at constant speed and bounces elastically off the frame edges,
* swings like a pendulum (rotation ``theta(t) = bias + amp * sin(2 pi f t + phase)``),
* approaches or recedes from the camera (exponential zoom over the clip),

filmed by a camera with a finite exposure (motion blur: each frame averages ``SUBSTEPS`` poses
across half a frame interval), an uneven, flickering illumination, a slightly tinted light and
Gaussian sensor noise. Every pose, speed, light and noise parameter is drawn from ``rng``, so
the class reaches the video only through the digit's shape.

The output is ``FRAMES`` RGB frames of ``CANVAS`` x ``CANVAS`` pixels (a bit larger than the
28 x 28 digit) at ``FPS`` frames per second, uint8 ``(T, H, W, 3)``: the raw item the video
preprocessor accepts from a user (an array without timestamps is read at the video config's
``fps``, which matches ``FPS``). All frames are rendered in one vectorised bilinear warp (about
1 ms per video).
"""
from __future__ import annotations

import numpy as np

from binder.datasets.sources import SOURCES, DigitsSource

FPS = 4.0  # frames per second (modalities/video.py: VideoConfig.fps)
FRAMES = 16  # 4 s of video
CANVAS = 32  # frame side in pixels
SUBSTEPS = 2  # poses averaged per frame (motion blur)
SHUTTER = 0.5  # exposure time as a fraction of the frame interval
MARGIN = 4.0  # the digit's centre stays within this many pixels of the frame centre
DIGIT_CENTRE = 13.5  # centre of the 28 x 28 MNIST box, in its pixel coordinates


def _bounce(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold free-flight positions into [lo, hi] as elastic bounces off both walls."""
    span = hi - lo
    m = np.mod(x - lo, 2 * span)
    return lo + span - np.abs(m - span)


def _poses(rng: np.random.Generator, times: np.ndarray) -> tuple:
    """Centre (2, *times.shape) in canvas pixels, angle (rad) and scale at each time."""
    mid = (CANVAS - 1) / 2
    start = rng.uniform(mid - MARGIN, mid + MARGIN, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(2.0, 6.0)  # pixels per second
    velocity = speed * np.array([np.cos(heading), np.sin(heading)])
    centre = _bounce(start[:, None, None] + velocity[:, None, None] * times[None], mid - MARGIN, mid + MARGIN)
    bias, amp = np.deg2rad(rng.uniform(-10, 10)), np.deg2rad(rng.uniform(5, 25))
    freq, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi)
    angle = bias + amp * np.sin(2 * np.pi * freq * times + phase)
    zoom = rng.uniform(-0.05, 0.05)  # log-scale change per second
    scale = rng.uniform(0.9, 1.1) * np.exp(zoom * times)
    return centre, angle, scale


def _warp(digit: np.ndarray, centre: np.ndarray, angle: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Bilinearly sample the digit at every canvas pixel of every pose -> (*angle.shape, H, W).

    Canvas pixel p sees digit pixel ``R(-angle) (p - centre) / scale + DIGIT_CENTRE``; ink
    outside the 28 x 28 box is zero. Vectorised numpy gathers (no per-frame calls, no threads).
    """
    grid = np.arange(CANVAS, dtype=np.float32)
    cos = (np.cos(angle) / scale).astype(np.float32)[..., None, None]
    sin = (np.sin(angle) / scale).astype(np.float32)[..., None, None]
    dx = grid[None, :] - centre[0].astype(np.float32)[..., None, None]  # (T, S, 1, W)
    dy = grid[:, None] - centre[1].astype(np.float32)[..., None, None]  # (T, S, H, 1)
    # Coordinates in the digit zero-padded to (30, 30), clipped onto its zero border.
    u = np.clip(cos * dx + sin * dy + (DIGIT_CENTRE + 1), 0, 28.999)  # (T, S, H, W)
    v = np.clip(cos * dy - sin * dx + (DIGIT_CENTRE + 1), 0, 28.999)
    padded = np.pad(digit, 1).ravel()
    u0, v0 = u.astype(np.int32), v.astype(np.int32)
    fu, fv = u - u0, v - v0
    idx = v0 * 30 + u0
    top = padded[idx] + (padded[idx + 1] - padded[idx]) * fu
    bottom = padded[idx + 30] + (padded[idx + 31] - padded[idx + 30]) * fu
    return top + (bottom - top) * fv


def _light(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
    """Ink coverage (T, H, W) in [0, 1] -> RGB frames (T, H, W, 3) in [0, 1] under random light."""
    t = ink.shape[0]
    grid = np.arange(CANVAS, dtype=np.float32) / (CANVAS - 1) - 0.5
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.float32(np.cos(direction)) * grid[None, :] + np.float32(np.sin(direction)) * grid[:, None]  # (H, W)
    background = np.float32(rng.uniform(0.0, 0.12)) + np.float32(rng.uniform(0.0, 0.1)) * ramp
    gain = np.float32(rng.uniform(0.65, 1.0))
    flicker = 1 + rng.uniform(-0.06, 0.06, size=(t, 1, 1)).astype(np.float32)
    noise = rng.standard_normal(ink.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.05))
    gray = (background + gain * ink) * flicker + noise  # (T, H, W)
    tint = rng.uniform(0.85, 1.0, size=3).astype(np.float32)
    return gray[..., None] * tint  # (T, H, W, 3)


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Film one MNIST instance on a moving, swinging card.

    Args:
        digit: The (28, 28) uint8 MNIST image.
        rng: Source of every random pose, light and noise parameter.

    Returns:
        uint8 video (FRAMES, CANVAS, CANVAS, 3), ``FPS`` frames per second.
    """
    ink = np.ascontiguousarray(digit, dtype=np.float32) / 255.0
    exposure = (np.arange(SUBSTEPS) + 0.5) / SUBSTEPS * SHUTTER  # fraction of a frame interval
    times = ((np.arange(FRAMES)[:, None] + exposure[None]) / FPS).astype(np.float32)  # (T, S)
    centre, angle, scale = _poses(rng, times)
    frames = _warp(ink, centre, angle, scale).mean(1)  # (T, H, W): motion blur over the exposure
    rgb = _light(rng, frames)
    return (np.clip(rgb, 0.0, 1.0) * np.float32(255) + np.float32(0.5)).astype(np.uint8)


SOURCES.register("video", DigitsSource(render=render))
