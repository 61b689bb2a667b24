"""Small signal generators shared by the tests (imported as ``helpers``)."""
from __future__ import annotations

import numpy as np

# A shrunk encoder for tests that build one: 1 block, 32 wide (the tiny preset is 4 x 128).
SMALL_ENCODER = {"depth": 1, "width": 32, "heads": 2}


def small_encoder(modality: str = "audio") -> list:
    """Hydra overrides that shrink ``modality``'s encoder to SMALL_ENCODER."""
    return [f"modality.{modality}.encoder.{k}={v}" for k, v in SMALL_ENCODER.items()]


def set_overrides(encoder) -> dict:
    """The encoder overrides that were set (null fields keep the preset's value)."""
    from dataclasses import asdict, is_dataclass

    values = asdict(encoder) if is_dataclass(encoder) else dict(encoder)
    return {k: v for k, v in values.items() if v is not None}


def sine(freq: float = 440.0, seconds: float = 1.0, rate: int = 16000, amp: float = 0.5) -> np.ndarray:
    """A float32 sine wave."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(seconds: float = 1.0, rate: int = 16000, f0: float = 200.0, f1: float = 3000.0, seed: int = 0) -> np.ndarray:
    """A float32 linear chirp plus a little noise (a signal whose clips differ)."""
    t = np.arange(int(round(seconds * rate))) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds))
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.4 * np.sin(phase) + noise).astype(np.float32)


def blob_image(rng: np.random.Generator):
    """A distinct 28 x 56 test image per draw: 4 x 8 random levels upscaled into smooth blobs, so
    embeddings of different draws differ clearly (the anchor's composite size)."""
    from PIL import Image

    return Image.fromarray(rng.integers(0, 255, (4, 8), dtype=np.uint8)).resize((56, 28))


def write_blobs(folder, names, seed: int = 0) -> list:
    """``blob_image`` files ``folder/name`` for each name, drawn in order from ``seed``."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        blob_image(rng).save(folder / name)
        paths.append(folder / name)
    return paths
