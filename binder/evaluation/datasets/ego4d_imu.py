"""Ego4D IMU: head-worn IMU around narrated moments, classified by the video's scenario (Grauman et
al., CVPR 2022; ego4d-data.org).

Layout (what the Ego4D CLI downloads): ``<root>/ego4d.json`` (the metadata: ``videos`` with
``video_uid``, ``scenarios`` and ``has_imu``), ``<root>/v2/annotations/narration.json`` (or
``v1/...``; ``{video_uid: {"narration_pass_1": {"narrations": [{"timestamp_sec", "narration_text"}]}}}``)
and ``<root>/v2/imu/<video_uid>.csv`` (or ``v1/imu``, ``imu``) with columns ``component_idx,
component_timestamp_ms, canonical_timestamp_ms, gyro_x, gyro_y, gyro_z, accl_x, accl_y, accl_z``.

Protocol (ImageBind, arXiv 2305.05665, appendix B): videos with exactly one scenario (7,485 of
9,645) and IMU; for each narration a 5 s window centred on its timestamp (canonical time), the
six channels (accelerometer then gyroscope) given to the model's IMU preprocessing with the
window's measured rate; the window is classified among the scenarios (108 in the full metadata;
class names are the metadata's scenario strings). The paper reports 68,865 test clips but not
which videos are test: binder's ``test`` split holds the videos whose CRC32 of ``video_uid``
falls in the first ``test_fraction`` of the range (``train`` the others, ``all`` every video);
a window that leaves the recording or holds fewer than ``min_samples`` samples is skipped and
counted. Published: ``imagebind_huge`` 25.0 top-1.
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Tuple

import numpy as np

from binder.errors import BinderInputError, reading
from binder.evaluation.base import (
    CLASSIFICATION,
    ProtocolInfo,
    Record,
    Split,
    check_root,
    check_split,
    first_existing,
    read_csv,
    register_dataset,
    require,
)
from binder.evaluation.datasets._common import published
from binder.evaluation.prompts import CLIP_TEMPLATES

CHANNELS = ["accl_x", "accl_y", "accl_z", "gyro_x", "gyro_y", "gyro_z"]
TIME = "canonical_timestamp_ms"
_LOADED: Dict[Tuple[int, str], Tuple[np.ndarray, np.ndarray]] = {}  # (pid, csv) -> (seconds, (6, T)); last one


def read_imu(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """An Ego4D IMU CSV -> (times in seconds (T,), values (6, T) acc x/y/z, gyro x/y/z), sorted by time."""
    key = (os.getpid(), path)
    if key in _LOADED:
        return _LOADED[key]
    rows = read_csv(Path(path), "Ego4D IMU", [TIME, *CHANNELS])
    with reading(path, "Ego4D IMU file", "numbers in every row"):
        table = np.array([[float(r[TIME])] + [float(r[c]) for c in CHANNELS] for r in rows], dtype=np.float64)
    if table.size == 0:
        raise BinderInputError(f"Ego4D IMU file {path!r} has no samples")
    table = table[np.argsort(table[:, 0], kind="stable")]
    _LOADED.clear()
    _LOADED[key] = (table[:, 0] / 1000.0, table[:, 1:].T.astype(np.float32))
    return _LOADED[key]


def single_scenario_videos(meta: Path) -> Dict[str, str]:
    """``{video_uid: scenario}`` of the videos with IMU and exactly one scenario."""
    with reading(meta, "Ego4D metadata", "the Ego4D metadata JSON (ego4d.json)"):
        data = json.loads(meta.read_text(encoding="utf-8"))
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, list):
        raise BinderInputError(f"Ego4D: {str(meta)!r} has no 'videos' list; expected the Ego4D metadata (ego4d.json)")
    out = {}
    for v in videos:
        scenarios = v.get("scenarios") or []
        if len(scenarios) == 1 and v.get("has_imu", True) and v.get("video_uid"):
            out[str(v["video_uid"])] = str(scenarios[0])
    return out


@register_dataset
@dataclass
class Ego4DIMU:
    """Ego4D IMU zero-shot scenario classification."""

    name: ClassVar[str] = "ego4d-imu"
    title: ClassVar[str] = "Ego4D IMU"
    task: ClassVar[str] = CLASSIFICATION
    modality: ClassVar[str] = "imu"
    splits: ClassVar[Tuple[str, ...]] = ("test", "train", "all")
    default_split: ClassVar[str] = "test"
    layout: ClassVar[str] = ("<root>/ego4d.json, <root>/v2/annotations/narration.json and "
                             "<root>/v2/imu/<video_uid>.csv")
    window: float = 5.0  # seconds per window, centred on the narration
    test_fraction: float = 0.2  # share of videos (by CRC32 of video_uid) in the test split
    min_samples: int = 10  # windows with fewer IMU samples are skipped
    max_per_video: int = 0  # windows per video (0: every narration)

    def _in_split(self, uid: str, split: str) -> bool:
        test = zlib.crc32(uid.encode()) / 2 ** 32 < self.test_fraction
        return split == "all" or test == (split == "test")

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        meta = require(root / "ego4d.json", self.title, "the metadata", self.layout)
        narr = first_existing([root / v / "annotations" / "narration.json" for v in ("v2", "v1")]
                              + [root / "annotations" / "narration.json"], self.title, "the narrations", self.layout)
        imu_dir = first_existing([root / "v2" / "imu", root / "v1" / "imu", root / "imu"], self.title, "the IMU folder",
                                 self.layout)
        videos = single_scenario_videos(meta)
        classnames = sorted(set(videos.values()))
        with reading(narr, "Ego4D narrations", "the Ego4D narration JSON"):
            narrations = json.loads(narr.read_text(encoding="utf-8"))
        records, skipped = [], []
        for uid in sorted(videos):
            if not self._in_split(uid, split) or uid not in narrations:
                continue
            csv_path = imu_dir / f"{uid}.csv"
            if not csv_path.is_file():
                skipped.append((uid, f"no IMU file {csv_path.name} in {imu_dir.name}/"))
                continue
            times = [n["timestamp_sec"] for p in narrations[uid].values() if isinstance(p, dict)
                     for n in p.get("narrations", []) if "timestamp_sec" in n]
            for k, t in enumerate(sorted(times)[: self.max_per_video or None]):
                records.append(Record(id=f"{uid}@{t:.3f}", source=(str(csv_path), float(t)), path=str(csv_path),
                                      label=classnames.index(videos[uid])))
        protocol = ProtocolInfo(
            name="ego4d-imu-imagebind", version="1", source=f"{__name__}: ImageBind appendix B; Ego4D (Grauman 2022)",
            choices={"window_s": self.window, "videos": "single-scenario videos with IMU",
                     "split": f"CRC32(video_uid) < {self.test_fraction} is test", "channels": CHANNELS,
                     "time": TIME, "prompts": "CLIP's 80 templates"},
            published=published("acc1", 25.0))
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=classnames,
                     templates=list(CLIP_TEMPLATES), skipped=skipped, files=[str(meta), str(narr)],
                     probe_train="train" if split == "test" else None)

    def load(self, record: Record) -> Any:
        path, t = record.source
        times, values = read_imu(path)
        half = self.window / 2
        if t - half < times[0] or t + half > times[-1]:
            raise BinderInputError(f"the {self.window:g} s window at {t:.2f} s leaves the IMU recording "
                                   f"({times[0]:.2f}-{times[-1]:.2f} s)")
        mask = (times >= t - half) & (times < t + half)
        if mask.sum() < self.min_samples:
            raise BinderInputError(f"the window at {t:.2f} s holds {int(mask.sum())} IMU samples "
                                   f"(< {self.min_samples})")
        window_t = times[mask]
        rate = (len(window_t) - 1) / max(window_t[-1] - window_t[0], 1e-9)
        return values[:, mask], float(rate)
