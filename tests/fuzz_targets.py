"""Fuzzing binder's file loaders: mutated files in, a binder error or a finite embedding out.

Each target starts from valid seed files (a WAV, a PNG, a 16-bit depth PNG, a ``.npy`` depth
map, a thermal TIFF, an IMU CSV, ``.npz`` and ``.npy``, an MP4 video, and a saved model folder's
``config.json`` and ``model.safetensors``), mutates their bytes (bit flips, overwritten runs,
truncation, insertions, duplicated chunks, appended garbage, and the empty file) and feeds them
to binder through the public path: ``model.embed(<modality>=[path])``, ``binder.load(folder)``.
An input passes when binder answers with one of its own errors (``BinderError``) or with finite,
unit-norm embeddings within the time limit; anything else (another exception type, NaN, a hang)
is a finding, saved under ``--out`` for reproduction.

    python tests/fuzz_targets.py --minutes 10 --out /tmp/fuzz     # a longer local run
    (tests/test_fuzz.py runs every target for a few seconds in CI)
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger("fuzz")

TIME_LIMIT = 20  # seconds per input: longer is a hang


class Hang(Exception):
    """An input took longer than the time limit."""


@dataclass
class Report:
    """What a fuzzing session tried and found."""

    inputs: Counter = field(default_factory=Counter)  # target -> inputs tried
    outcomes: Counter = field(default_factory=Counter)  # (target, outcome) -> count
    findings: List[Dict[str, str]] = field(default_factory=list)

    def summary(self) -> Dict[str, object]:
        return {"inputs": dict(self.inputs), "outcomes": {f"{t}/{o}": n for (t, o), n in sorted(self.outcomes.items())},
                "findings": self.findings}


# ----------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------

def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


def _wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _imu_csv() -> bytes:
    t = np.arange(200) / 100
    rows = ["t,acc_x,acc_y,acc_z,gyro_x,gyro_y,gyro_z"]
    rows += [",".join(f"{v:.4f}" for v in (s, np.sin(s), 0.1, 9.81, 0.01, np.cos(s), 0.0)) for s in t]
    return ("\n".join(rows) + "\n").encode()


def _mp4(folder: Path) -> bytes:
    import av

    path = folder / "seed.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(16):
            frame = np.full((32, 32, 3), (i * 15) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def seeds(folder: Path) -> Dict[str, List[tuple]]:
    """Per modality: (file suffix, seed bytes) pairs."""
    rng = np.random.default_rng(0)
    return {
        "audio": [(".wav", _wav())],
        "image": [(".png", _png(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)))],
        "depth": [(".png", _png((rng.uniform(500, 3000, (20, 24))).astype(np.uint16))),
                  (".npy", _npy(rng.uniform(0.5, 3.0, (20, 24)).astype(np.float32)))],
        "thermal": [(".tiff", _tiff(rng.integers(0, 65535, (20, 24), dtype=np.uint16))),
                    (".png", _png(rng.integers(0, 255, (20, 24), dtype=np.uint8)))],
        "imu": [(".csv", _imu_csv()), (".npz", _npz(samples=rng.normal(0, 1, (6, 300)).astype(np.float32),
                                                    sample_rate=np.array(100.0))),
                (".npy", _npy(rng.normal(0, 1, (300, 6)).astype(np.float32)))],
        "video": [(".mp4", _mp4(folder))],
    }


# ----------------------------------------------------------------------------------------------
# Mutations
# ----------------------------------------------------------------------------------------------

def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation of ``data`` (sometimes several stacked)."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.choice(("flip", "overwrite", "truncate", "insert", "duplicate", "append", "zero", "empty"))
        n = max(1, len(b))
        at = rng.randrange(n)
        if kind == "flip" and b:
            b[at] ^= 1 << rng.randrange(8)
        elif kind == "overwrite" and b:
            run = rng.randint(1, 64)
            b[at:at + run] = bytes(rng.randrange(256) for _ in range(min(run, len(b) - at)))
        elif kind == "truncate":
            b = b[:rng.randrange(n)]
        elif kind == "insert":
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif kind == "duplicate" and b:
            run = rng.randint(1, min(256, len(b)))
            b[at:at] = b[at:at + run]
        elif kind == "append":
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 256)))
        elif kind == "zero" and b:
            run = rng.randint(1, 256)
            b[at:at + run] = bytes(min(run, len(b) - at))
        elif kind == "empty":
            b = bytearray()
    return bytes(b)


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------

def _deadline(seconds: int) -> Callable:
    def expire(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    return lambda: signal.alarm(0)


def _check(z) -> Optional[str]:
    import torch

    if not torch.isfinite(z).all():
        return "non-finite embedding"
    if not torch.allclose(z.norm(dim=-1), torch.ones(len(z)), atol=1e-4):
        return "embedding not unit-norm"
    return None


def run_input(fn: Callable[[], Optional[str]]) -> tuple:
    """Run one input -> (outcome, detail): ok | binder-error | finding."""
    from binder.errors import BinderError

    cancel = _deadline(TIME_LIMIT)
    try:
        problem = fn()
        return ("finding", problem) if problem else ("ok", "")
    except BinderError as err:
        return "binder-error", type(err).__name__
    except Hang as err:
        return "finding", f"hang: {err}"
    except Exception as err:  # anything else is a finding
        return "finding", f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=6)}"
    finally:
        cancel()


class Fuzzer:
    """Mutation fuzzing of every file loader through ``model.embed`` and ``binder.load``."""

    def __init__(self, model, saved: Path, work: Path, out: Optional[Path] = None, seed: int = 0) -> None:
        self.model, self.saved, self.work, self.out = model, saved, work, out
        self.rng = random.Random(seed)
        self.seeds = seeds(work)
        self.report = Report()

    def targets(self) -> List[str]:
        """Every target: the file modalities the model embeds, and the model folder."""
        return [m for m in self.seeds if m in self.model.modalities] + ["model-config", "model-weights"]

    def _file(self, modality: str) -> tuple:
        suffix, data = self.rng.choice(self.seeds[modality])
        blob = mutate(data, self.rng)
        path = self.work / f"input{suffix}"
        path.write_bytes(blob)

        def fn() -> Optional[str]:
            return _check(self.model.embed(**{modality: [path]}, progress=False)[modality])

        return fn, blob, suffix

    def _folder(self, part: str) -> tuple:
        folder = self.work / "model"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(self.saved, folder)
        name = "config.json" if part == "config" else "model.safetensors"
        blob = mutate((folder / name).read_bytes(), self.rng)
        (folder / name).write_bytes(blob)
        verify = part == "config" or self.rng.random() < 0.3  # weights: mostly past the digest check

        def fn() -> Optional[str]:
            import binder

            loaded = binder.load(folder, verify=verify)
            return _check(loaded.embed(text=["a"], progress=False)["text"])

        return fn, blob, name

    def one(self, target: str) -> str:
        """Fuzz ``target`` with one input; returns the outcome."""
        fn, blob, suffix = self._folder(target.split("-")[1]) if target.startswith("model-") else self._file(target)
        outcome, detail = run_input(fn)
        self.report.inputs[target] += 1
        self.report.outcomes[(target, outcome)] += 1
        if outcome == "finding":
            record = {"target": target, "detail": detail[:2000]}
            if self.out is not None:
                self.out.mkdir(parents=True, exist_ok=True)
                path = self.out / f"{target}-{len(self.report.findings)}{suffix}"
                path.write_bytes(blob)
                record["input"] = str(path)
            self.report.findings.append(record)
            log.warning("finding in %s: %s", target, detail.splitlines()[0] if detail else "")
        return outcome

    def run(self, seconds: float, targets: Optional[List[str]] = None) -> Report:
        """Round-robin over ``targets`` for ``seconds``."""
        targets = targets or self.targets()
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            self.one(targets[i % len(targets)])
            i += 1
        return self.report


def build(work: Path):
    """A small model of every built-in file modality over a random anchor, and its saved folder."""
    import torch

    import binder
    from binder.anchor import OpenClipAnchor
    from binder.logs import quiet_third_party

    quiet_third_party()
    torch.manual_seed(0)
    small = {"encoder": {"depth": 1, "width": 32, "heads": 2}}
    model = binder.BindModel(OpenClipAnchor(model="binder-digits"),
                             {m: small for m in ("audio", "depth", "thermal", "imu", "video")}).eval()
    return model, binder.save(model, work / "saved")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz binder's file loaders (mutation-based).")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run")
    parser.add_argument("--out", type=Path, default=None, help="folder for inputs that gave findings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        model, saved = build(Path(tmp))
        start = time.monotonic()
        report = Fuzzer(model, saved, Path(tmp), args.out, args.seed).run(args.minutes * 60).summary()
    report["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(report, indent=2))
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
