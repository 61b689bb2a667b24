"""Depth renderer of the digits world: an embossed digit tile seen by a Kinect-like depth camera.

The scene: a flat tile carrying the MNIST digit as *relief* (each stroke raised towards the
camera by ``relief * intensity``, so the class lives only in the relief's shape) is held in
front of a structured-light depth camera. Per item the process draws

* the pose: distance 0.45-0.9 m, tilt about both image axes up to 30 degrees, in-plane
  rotation up to 15 degrees, a small off-centre shift and a tile of 8-10.5 % of the distance
  (3.6-9.5 cm, so the digit spans about 30-40 of the 48 pixels);
* the relief height: 1-3 cm;
* the camera: a 48 x 48 crop of a Kinect-v1 frame (focal length 518.86 px, the default of
  :class:`modalities.depth.DepthConfig`), pinhole projection; every pixel's ray is intersected
  with the (raised) tile surface, giving metric depth along the optical axis;
* sensor effects (Nguyen, Izadi & Lovell, 3DIMPVT 2012, Kinect noise model): axial noise with
  std 0.0012 + 0.0019 (z - 0.4)^2 m, quantisation to 1 mm (16-bit millimetre PNGs), missing
  pixels where the projector is shadowed by a raised edge (steep relief steps, with some
  probability) plus 0-4 % random dropouts; missing pixels read 0, as sensors report them.

``render(digit, rng)`` returns the depth map as float32 metres (48, 48), the raw item the depth
preprocessor accepts from a user. Pure numpy, well under a millisecond per item.
"""
from __future__ import annotations

import numpy as np

from binder.datasets.sources import SOURCES, DigitsSource

SIZE = 48  # rendered frame side (pixels)
FOCAL = 518.857901  # pixels (Kinect v1, as Omnivore / DepthConfig.focal_length)
_V, _U = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) - (SIZE - 1) / 2
RAYS = np.stack([_U.ravel() / FOCAL, _V.ravel() / FOCAL, np.ones(SIZE * SIZE)])  # (3, N) pinhole rays, z = 1


def _rotation(ax: float, ay: float) -> np.ndarray:
    """Rotation about the camera's x axis by ``ax`` then its y axis by ``ay`` (radians)."""
    cx, sx, cy, sy = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return ry @ rx


def bilinear(img: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Sample ``img`` (H, W) at fractional (row, col) positions; outside the image reads 0."""
    h, w = img.shape
    flat = np.pad(img, 1).ravel()  # a zero border: clipped positions read 0
    r = np.clip(r + 1.0, 0.0, h + 0.999)
    c = np.clip(c + 1.0, 0.0, w + 0.999)
    r0, c0 = r.astype(np.int64), c.astype(np.int64)
    fr, fc = r - r0, c - c0
    i = r0 * (w + 2) + c0  # top-left neighbour in the padded image
    top = flat[i] * (1 - fc) + flat[i + 1] * fc
    bottom = flat[i + w + 2] * (1 - fc) + flat[i + w + 3] * fc
    return top * (1 - fr) + bottom * fr


def _tile_coords(rng: np.random.Generator, rays: np.ndarray) -> tuple:
    """Intersect the rays (3, N) with a randomly posed tile -> (digit row, digit col, plane depth
    numerator, n . ray) per ray."""
    z0 = rng.uniform(0.45, 0.9)
    rot = _rotation(*np.radians(rng.uniform(-30, 30, 2)))
    normal = rot @ np.array([0.0, 0.0, 1.0])  # points away from the camera
    spin = np.radians(rng.uniform(-15, 15))
    e1 = rot @ np.array([np.cos(spin), np.sin(spin), 0.0])  # tile's "column" axis
    e2 = rot @ np.array([-np.sin(spin), np.cos(spin), 0.0])  # tile's "row" axis
    centre = np.array([*rng.uniform(-0.004, 0.004, 2), z0])
    d_plane = normal @ centre
    n_dot = normal @ rays  # (N,)
    points = rays * (d_plane / n_dot)  # (3, N) on the base plane
    rel = points - centre[:, None]
    metres_per_px = z0 * rng.uniform(0.08, 0.105) / 28.0  # tile side (the digit spans ~30-40 px) over 28 px
    col = (e1 @ rel) / metres_per_px + 13.5
    row = (e2 @ rel) / metres_per_px + 13.5
    return row, col, d_plane, n_dot


def render(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render MNIST ``digit`` (28, 28) uint8 as a depth map in metres (48, 48) float32."""
    row, col, d_plane, n_dot = _tile_coords(rng, RAYS)
    height = bilinear(digit.astype(np.float64) / 255.0, row, col).reshape(SIZE, SIZE)  # relief in [0, 1]
    relief = rng.uniform(0.01, 0.03)
    depth = (d_plane - relief * height.ravel()) / n_dot  # ray meets the raised surface, (N,)
    depth = depth.reshape(SIZE, SIZE)
    sigma = 0.0012 + 0.0019 * (depth - 0.4) ** 2  # Kinect axial noise (metres)
    depth = depth + rng.standard_normal(depth.shape) * sigma
    depth = np.round(depth * 1000.0) / 1000.0  # millimetre quantisation
    # Projector shadows: the projector sits beside the camera (along +x), so pixels just past a
    # steep rising relief edge in x are not lit.
    step = np.zeros_like(height)
    step[:, 1:] = height[:, :-1] - height[:, 1:]
    shadow = (step > 0.35) & (rng.random(height.shape) < rng.uniform(0.2, 0.8))
    dropout = rng.random(height.shape) < rng.uniform(0.0, 0.04)
    depth[shadow | dropout] = 0.0
    return depth.astype(np.float32)


SOURCES.register("depth", DigitsSource(render=render))
