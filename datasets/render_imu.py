"""Digits-world IMU: a hand-held device tracing the digit's stroke in the air.

Each item is an ``(samples (T, 6) float32, rate)`` recording of accelerometer x/y/z (m/s^2)
and gyroscope x/y/z (rad/s) in the device frame, the raw form ImageBind's IMU branch consumes
(Ego4D head-mounted IMU, arXiv 2305.05665, appendix C). The process, per read:

1. **Stroke path** (cached per MNIST instance): threshold the 28 x 28 digit, thin it to a
   one-pixel skeleton (Zhang & Suen 1984), order the skeleton pixels into one path by a
   nearest-neighbour walk from the top-left end point (jumps between strokes are pen lifts that
   the hand still travels), resample it by arc length and smooth it. Only this path depends on
   the digit, so the class is carried by the stroke shape alone.
2. **Handwriting variation**: a small random in-plane rotation, slant and aspect change, and a
   random height of 0.15-0.45 m for the whole digit.
3. **Speed profile**: the stroke takes 1.2-3.2 s; tangential speed follows the two-thirds power
   law of human drawing (speed proportional to curvature^(-1/3), Lacquaniti et al. 1983) times
   a slow random modulation, inside a smooth start/stop time warp (zero speed at both ends),
   with 0.1-0.35 s of rest before and after. Positions are low-passed (Gaussian, ~35 ms) as
   the arm's inertia would do, then differentiated twice for the linear acceleration ``a``.
4. **Pose**: the writing plane has a random yaw and a tilt between vertical (air writing in
   front of the body) and 60 degrees towards horizontal (writing on a table); the device is
   held with its x/y axes roughly along the digit's right/up axes, plus a fixed random offset
   rotation (~10 degrees per axis). The hand pivots about the wrist/elbow (lever arm
   0.3-0.8 m), so the device pitches with the pen's height and yaws with its horizontal
   position (rotation angle = displacement / lever arm, as a pointing device does); it also
   tilts slightly towards its direction of motion (rotation vector proportional to ``n x v``)
   and wobbles (sums of 0.2-1.5 Hz sines). The accelerometer thus sees gravity tilt with the
   pen position and the gyroscope sees the pen velocity over the lever arm.
5. **Sensors**: the accelerometer measures specific force in the device frame,
   ``f = R(t)^T (a - g)`` with ``g = (0, 0, -9.81)`` m/s^2 (so a device at rest reads +9.81
   along its up axis); the gyroscope measures the body angular rate ``omega`` from
   ``R(t_k)^T R(t_k+1) = Exp(omega dt)``. Both get a constant bias, a +-2% scale error and
   white noise (MEMS-phone magnitudes). The recording is returned at 100 Hz.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np

from binder.datasets.sources import SOURCES, DigitsSource

RATE = 100  # output sample rate (Hz), a typical phone/wearable IMU rate
GRAVITY = 9.81  # m/s^2
_PATH_STEP = 0.5  # arc-length spacing of the cached path (pixels)


# ----------------------------------------------------------------------------------------------
# 1. Stroke path from the digit image (deterministic, cached)
# ----------------------------------------------------------------------------------------------

def _thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean image -> one-pixel-wide skeleton (same shape)."""
    img = np.pad(mask, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            # Neighbours P2..P9, clockwise from north.
            p = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],
                 img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]
            count = sum(q.astype(np.int32) for q in p)
            transitions = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.int32) for i in range(8))
            north, east, south, west = p[0], p[2], p[4], p[6]
            if step == 0:
                side = (north * east * south == 0) & (east * south * west == 0)
            else:
                side = (north * east * west == 0) & (north * south * west == 0)
            remove = (c == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & side
            if remove.any():
                c[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _order_points(points: np.ndarray) -> np.ndarray:
    """Order skeleton pixels (n, 2) as (x, y) into one path by a nearest-neighbour walk."""
    n = len(points)
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))  # (n, n)
    degree = ((dist > 0) & (dist < 1.5)).sum(1)
    ends = np.flatnonzero(degree <= 1)
    pool = ends if len(ends) else np.arange(n)
    start = pool[np.argmin(points[pool, 1] + 0.5 * points[pool, 0])]  # top-left end point
    order = [int(start)]
    dist[:, start] = np.inf
    for _ in range(n - 1):
        nxt = int(np.argmin(dist[order[-1]]))
        order.append(nxt)
        dist[:, nxt] = np.inf
    return points[order]


def _resample_path(path: np.ndarray, step: float) -> np.ndarray:
    """Resample a polyline (n, 2) at uniform arc-length spacing ``step``."""
    seg = np.sqrt((np.diff(path, axis=0) ** 2).sum(1))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    grid = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(grid, s, path[:, 0]), np.interp(grid, s, path[:, 1])], 1)


def _gauss_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with edge padding (``sigma`` in samples)."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(x, [(r, r)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    out = np.stack([np.convolve(padded[:, j], k, mode="valid") for j in range(x.shape[1])], 1)
    return out


@lru_cache(maxsize=16384)
def _stroke_path(key: bytes) -> np.ndarray:
    """Smoothed stroke path of a digit (raw bytes of its 28 x 28 uint8 image) -> (m, 2) (x, y up),
    centred, in units of the digit's height."""
    digit = np.frombuffer(key, dtype=np.uint8).reshape(28, 28)
    skel = _thin(digit > 100)
    rows, cols = np.nonzero(skel)
    if len(rows) < 2:  # blank image: a short dab
        rows, cols = np.array([13.0, 15.0]), np.array([14.0, 14.0])
    points = np.stack([cols, rows], 1).astype(np.float64)  # (n, 2) (x right, y down)
    path = _resample_path(_order_points(points), _PATH_STEP)
    if len(path) < 4:
        path = np.stack([path[0] + [0.0, -1.0], path[0] + [0.0, 1.0]])
        path = _resample_path(path, _PATH_STEP)
    path = _gauss_smooth(path, sigma=1.2 / _PATH_STEP)
    path[:, 1] *= -1  # y up
    height = max(np.ptp(path[:, 1]), 4.0)
    return (path - path.mean(0)) / height


# ----------------------------------------------------------------------------------------------
# 2-5. Motion, pose and sensors
# ----------------------------------------------------------------------------------------------

def _rotation(rotvec: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors (..., 3) -> rotation matrices (..., 3, 3)."""
    theta = np.linalg.norm(rotvec, axis=-1, keepdims=True)[..., None]  # (..., 1, 1)
    k = rotvec / np.maximum(theta[..., 0], 1e-12)
    kx, ky, kz = k[..., 0], k[..., 1], k[..., 2]
    zero = np.zeros_like(kx)
    skew = np.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*k.shape[:-1], 3, 3)
    eye = np.broadcast_to(np.eye(3), skew.shape)
    return eye + np.sin(theta) * skew + (1 - np.cos(theta)) * (skew @ skew)


def _log_rotation(r: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_rotation` for angles < pi: matrices (..., 3, 3) -> rotation vectors (..., 3)."""
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos)
    vee = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    scale = np.where(theta < 1e-6, 0.5, theta / (2 * np.sin(np.maximum(theta, 1e-6))))
    return vee * scale[..., None]


def _time_law(path: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Path (m, 2) -> positions (n, 2) at n uniform times: two-thirds power law speed, random
    modulation, smooth start/stop."""
    d1 = np.gradient(path, axis=0)
    d2 = np.gradient(d1, axis=0)
    speed_px = np.maximum(np.linalg.norm(d1, axis=1), 1e-9)
    curvature = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / speed_px ** 3
    speed = np.clip(curvature + 0.3, None, 60.0) ** (-1 / 3)  # 2/3 power law, bounded on straights
    speed = _gauss_smooth(speed[:, None], sigma=3.0 / _PATH_STEP)[:, 0]  # no pixel-scale jitter
    u = np.linspace(0, 1, len(path))
    phase, freq = rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.5, 2.0, 2)
    speed *= 1 + 0.25 * np.sin(2 * np.pi * freq[0] * u + phase[0]) * np.sin(np.pi * freq[1] * u + phase[1])
    arrival = np.concatenate([[0.0], np.cumsum(1.0 / speed[1:])])
    arrival /= arrival[-1]  # normalised time at which each path point is reached
    tau = np.linspace(0, 1, n)
    warped = tau - np.sin(2 * np.pi * tau) / (2 * np.pi)  # zero speed at both ends
    index = np.interp(warped, arrival, np.arange(len(path)))
    lo = np.floor(index).astype(int).clip(0, len(path) - 2)
    frac = (index - lo)[:, None]
    return path[lo] * (1 - frac) + path[lo + 1] * frac


def _shape_variation(path: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random in-plane rotation, slant and aspect of the stroke (handwriting variation)."""
    angle = rng.uniform(-0.2, 0.2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[1.0, rng.uniform(-0.25, 0.25)], [0.0, 1.0]])
    aspect = np.diag([np.exp(rng.uniform(-0.15, 0.15)), 1.0])
    return path @ (rot @ shear @ aspect).T


def _plane_frame(rng: np.random.Generator) -> np.ndarray:
    """World axes of the writing plane (columns: digit right, digit up, normal to the writer)."""
    tilt, yaw = rng.uniform(0, np.radians(60)), rng.uniform(0, 2 * np.pi)
    right = np.array([1.0, 0.0, 0.0])
    up = np.array([0.0, np.sin(tilt), np.cos(tilt)])  # vertical plane at tilt 0
    frame = np.stack([right, up, np.cross(right, up)], 1)
    return _rotation(np.array([0.0, 0.0, yaw])) @ frame


def _wobble(rng: np.random.Generator, t: np.ndarray, amp: float) -> np.ndarray:
    """Sum of three random low-frequency sines per axis -> (n, 3) rotation vectors."""
    freq = rng.uniform(0.2, 1.5, (3, 3))
    phase = rng.uniform(0, 2 * np.pi, (3, 3))
    a = rng.uniform(0.3, 1.0, (3, 3)) * amp
    return (a[None] * np.sin(2 * np.pi * freq[None] * t[:, None, None] + phase[None])).sum(1)


def _trajectory(digit: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Digit -> in-plane positions (n, 2) in metres at RATE, including rests before and after."""
    path = _shape_variation(_stroke_path(np.ascontiguousarray(digit, dtype=np.uint8).tobytes()), rng)
    height = rng.uniform(0.15, 0.45)
    n_stroke = int(rng.uniform(1.2, 3.2) * RATE)
    pos = _time_law(path, rng, n_stroke) * height  # (n_stroke, 2)
    rest = [int(rng.uniform(0.1, 0.35) * RATE) for _ in range(2)]
    pos = np.concatenate([np.repeat(pos[:1], rest[0], 0), pos, np.repeat(pos[-1:], rest[1], 0)])
    return _gauss_smooth(pos, sigma=0.035 * RATE), np.arange(len(pos)) / RATE


def render(digit: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, int]:
    """Render one MNIST digit as an IMU recording of tracing it in the air.

    Args:
        digit: (28, 28) uint8 MNIST image.
        rng: Source of all randomness (pose, size, speed, noise).

    Returns:
        ``(samples, rate)``: float32 (T, 6) acc x/y/z (m/s^2) + gyro x/y/z (rad/s), and the
        rate in Hz (100).
    """
    pos2, t = _trajectory(digit, rng)  # (n, 2) metres, (n,) seconds
    dt = 1.0 / RATE
    vel2 = np.gradient(pos2, dt, axis=0)
    acc2 = np.gradient(vel2, dt, axis=0)
    plane = _plane_frame(rng)  # (3, 3) columns: right, up, normal
    acc_world = acc2 @ plane[:, :2].T  # (n, 3)
    # Device orientation: plane-aligned, a fixed offset, pivoting about the wrist/elbow,
    # tilting towards the motion, wobbling; rotation vectors in device (= plane) coordinates.
    offset = _rotation(rng.normal(0, 0.15, 3))
    centred = pos2 - pos2.mean(0)
    pivot = np.stack([centred[:, 1], -centred[:, 0], np.zeros(len(t))], 1) / rng.uniform(0.3, 0.8)
    gain = rng.uniform(0.05, 0.2)  # rad per (m/s)
    tilt = gain * np.stack([-vel2[:, 1], vel2[:, 0], np.zeros(len(t))], 1)  # n x v in plane coordinates
    rotvec = pivot + tilt + _wobble(rng, t, amp=rng.uniform(0.005, 0.025))
    r_world = plane @ offset @ _rotation(rotvec)  # (n, 3, 3) device -> world
    specific_force = acc_world + np.array([0.0, 0.0, GRAVITY])  # a - g, g = (0, 0, -9.81)
    acc = np.einsum("nji,nj->ni", r_world, specific_force)  # R^T f: (n, 3)
    step = np.einsum("nji,njk->nik", r_world[:-1], r_world[1:])  # R_k^T R_k+1
    gyro = _log_rotation(step) / dt  # (n - 1, 3)
    gyro = np.concatenate([gyro, gyro[-1:]])
    acc = acc * rng.uniform(0.98, 1.02, 3) + rng.normal(0, 0.08, 3) + rng.normal(0, rng.uniform(0.02, 0.08), acc.shape)
    gyro = (gyro * rng.uniform(0.98, 1.02, 3) + rng.normal(0, 0.01, 3)
            + rng.normal(0, rng.uniform(0.003, 0.015), gyro.shape))
    return np.concatenate([acc, gyro], 1).astype(np.float32), RATE


SOURCES.register("imu", DigitsSource(render=render))
