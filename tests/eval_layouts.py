"""Small fixtures in each evaluation dataset's exact on-disk layout, written with real formats
(WAV via soundfile, MP4 via PyAV, HDF5 .mat via h5py, MATLAB v5 .mat via scipy, VOC XML, JPEG,
JSON, CSV). Each writer returns the root and what a correct reader must find."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import soundfile as sf
from PIL import Image


def tone(path: Path, freq: float, seconds: float = 1.0, rate: int = 16000, channels: int = 1) -> Path:
    """A sine tone with a little noise, 16-bit PCM (the format follows the suffix)."""
    rng = np.random.default_rng(int(freq))
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.normal(size=t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([x] * channels, 1).astype(np.float32), rate, subtype="PCM_16")
    return path


def write_csv(path: Path, rows: Sequence[Sequence], header: Sequence[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def video(path: Path, seconds: float = 1.0, fps: int = 4, size=(48, 64), seed: int = 0, audio: bool = False) -> Path:
    """A moving pattern as MPEG-4 in MP4 (optionally with an AAC audio track)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000) if audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(int(seconds * fps)):
            y, x = np.mgrid[0:h, 0:w]
            frame = np.stack([(x * 3 + i * 9 + seed * 40) % 256, (y * 3 + seed * 20) % 256,
                              np.full_like(x, (i * 30) % 256)], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        if a is not None:
            t = np.arange(int(16000 * seconds)) / 16000
            fr = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * (300 + 100 * seed) * t)).astype(np.float32)[None],
                                            format="fltp", layout="mono")
            fr.sample_rate = 16000
            for p in [*a.encode(fr), *a.encode()]:
                c.mux(p)
    return path


# ----------------------------------------------------------------------------------------------
# Audio datasets
# ----------------------------------------------------------------------------------------------

ESC_CATEGORIES = ["dog", "crackling_fire", "church_bells"]


def write_esc50(root: Path, per_fold: int = 3, rate: int = 44100, seconds: float = 1.0) -> Dict:
    """ESC-50 layout: meta/esc50.csv + audio/<fold>-<src>-<take>-<target>.wav, ``per_fold`` per fold."""
    rows = []
    for fold in range(1, 6):
        for j in range(per_fold):
            target = j % len(ESC_CATEGORIES)
            name = f"{fold}-{100 + j}-A-{target}.wav"
            tone(root / "audio" / name, 200.0 * (target + 1) + fold, seconds, rate)
            rows.append([name, fold, target, ESC_CATEGORIES[target], "False", f"{100 + j}", "A"])
    write_csv(root / "meta" / "esc50.csv", rows,
              ["filename", "fold", "target", "category", "esc10", "src_file", "take"])
    return {"root": root, "n": 5 * per_fold, "classnames": [c.replace("_", " ") for c in ESC_CATEGORIES]}


def write_audioset(root: Path) -> Dict:
    """eval_segments.csv (# comments, quoted label lists), class_labels_indices.csv and audio/eval/
    in three naming styles; one segment's audio missing, one label mid unknown."""
    index = [(0, "/m/09x0r", "Speech"), (1, "/m/0jbk", "Animal"), (2, "/m/04rlf", "Music")]
    write_csv(root / "class_labels_indices.csv", index, ["index", "mid", "display_name"])
    segs = [("aaaaaaaaaaa", 0.0, 10.0, "/m/09x0r,/m/04rlf"), ("bbbbbbbbbbb", 30.0, 40.0, "/m/0jbk"),
            ("ccccccccccc", 5.0, 15.0, "/m/04rlf,/m/xxxxx"), ("ddddddddddd", 0.0, 10.0, "/m/0jbk")]
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017", "# num_ytids=4, num_segs=4, num_unique_labels=3",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    lines += [f'{y}, {s:.3f}, {e:.3f}, "{labels}"' for y, s, e, labels in segs]
    (root / "eval_segments.csv").write_text("\n".join(lines) + "\n")
    tone(root / "audio" / "eval" / "Yaaaaaaaaaaa.wav", 300)
    tone(root / "audio" / "eval" / "bbbbbbbbbbb_30.000_40.000.flac", 500)
    tone(root / "audio" / "eval" / "ccccccccccc_5.wav", 700)
    return {"root": root, "n": 3, "missing": "ddddddddddd_0.000", "classnames": ["Speech", "Animal", "Music"]}


def write_vggsound(root: Path) -> Dict:
    """vggsound.csv (no header) + video/<id>_<start:06d>.mp4 with AAC audio; one test clip missing."""
    rows = [("vid00000001", 30, "dog barking", "test"), ("vid00000002", 0, "playing piano", "test"),
            ("vid00000003", 10, "dog barking", "train"), ("vid00000004", 5, "rain", "test")]
    write_csv(root / "vggsound.csv", rows)
    for i, (ytid, start, _, _) in enumerate(rows[:3]):
        video(root / "video" / f"{ytid}_{start:06d}.mp4", seconds=1.0, seed=i, audio=True)
    return {"root": root, "n": 2, "classnames": ["dog barking", "playing piano", "rain"]}


def write_clotho(root: Path, n: int = 4) -> Dict:
    rows = []
    for i in range(n):
        tone(root / "evaluation" / f"clip {i}.wav", 250 + 90 * i, seconds=1.5)
        rows.append([f"clip {i}.wav"] + [f"caption {k} of sound {i}, with a comma" for k in range(5)])
    write_csv(root / "clotho_captions_evaluation.csv", rows, ["file_name"] + [f"caption_{k}" for k in range(1, 6)])
    return {"root": root, "n": n, "captions": 5 * n}


def write_audiocaps(root: Path) -> Dict:
    rows, k = [], 0
    for i, ytid in enumerate(["AAAAAAAAAAA", "BBBBBBBBBBB", "CCCCCCCCCCC"]):
        for c in range(5 if i < 2 else 1):
            rows.append([1000 + k, ytid, 30 * i, f"sound {i} caption {c}"])
            k += 1
    write_csv(root / "test.csv", rows, ["audiocap_id", "youtube_id", "start_time", "caption"])
    tone(root / "audio" / "test" / "YAAAAAAAAAAA.wav", 400)
    tone(root / "audio" / "test" / "BBBBBBBBBBB_30.wav", 800)
    return {"root": root, "n": 2, "missing": "CCCCCCCCCCC_60"}


# ----------------------------------------------------------------------------------------------
# Depth, thermal, IMU
# ----------------------------------------------------------------------------------------------

NYU_SCENES = ["kitchen", "bedroom", "cafe", "office", "study_room", "kitchen", "basement", "bathroom"]


def write_nyud(root: Path, scenes: Sequence[str] = NYU_SCENES, test: Sequence[int] = (1, 3, 4, 6, 7)) -> Dict:
    """nyu_depth_v2_labeled.mat as MATLAB v7.3 (HDF5 with the 512-byte MATLAB header, depths stored
    (N, W, H), sceneTypes a cell of char arrays) and splits.mat (MATLAB v5, 1-based indices)."""
    import h5py
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    path = root / "nyu_depth_v2_labeled.mat"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("depths", data=rng.uniform(0.7, 6.0, (len(scenes), 64, 48)).astype(np.float32))
        refs = f.create_group("#refs#")
        cell = np.empty((1, len(scenes)), dtype=h5py.ref_dtype)
        for i, s in enumerate(scenes):
            cell[0, i] = refs.create_dataset(f"s{i}", data=np.array([[ord(c)] for c in s], dtype=np.uint16)).ref
        f.create_dataset("sceneTypes", data=cell)
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    train = [i for i in range(len(scenes)) if i not in test]
    savemat(root / "splits.mat", {"testNdxs": np.array(test)[:, None] + 1, "trainNdxs": np.array(train)[:, None] + 1})
    return {"root": root, "n": len(test), "labels": [scenes[i] for i in test]}


def write_sunrgbd(root: Path) -> Dict:
    """Frame folders under kv1/ and kv2/ with scene.txt and depth_bfx PNGs (3-bit rotated mm), and
    SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat listing them with the toolbox's absolute paths."""
    from scipy.io import savemat

    frames = [("kv1/NYUdata/NYU0001", "bedroom"), ("kv2/kinect2data/000002_x", "office"),
              ("kv2/kinect2data/000003_x", "corridor"), ("kv1/b3dodata/img_0004", "idk"),
              ("kv2/kinect2data/000005_x", "kitchen")]
    rng = np.random.default_rng(0)
    for rel, scene in frames[:4]:  # the last frame is listed but absent
        folder = root / "SUNRGBD" / rel
        (folder / "depth_bfx").mkdir(parents=True)
        (folder / "scene.txt").write_text(scene)
        mm = rng.integers(500, 5000, (40, 52)).astype(np.uint16)
        stored = ((mm << 3) | (mm >> 13)).astype(np.uint16)
        Image.fromarray(stored).save(folder / "depth_bfx" / f"{Path(rel).name}.png")
    test = np.empty((1, 5), dtype=object)
    for i, (rel, _) in enumerate(frames):
        test[0, i] = f"/n/fs/sun3d/data/SUNRGBD/{rel}"
    train = np.empty((1, 1), dtype=object)
    train[0, 0] = "/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001"
    split_dir = root / "SUNRGBD" / "SUNRGBDtoolbox" / "traintestSUNRGBD"
    split_dir.mkdir(parents=True)
    savemat(split_dir / "allsplit.mat", {"alltest": test, "alltrain": train})
    return {"root": root / "SUNRGBD", "n": 3, "other": 1, "missing": "kv2/kinect2data/000005_x"}


def voc_xml(name: str, size, boxes: List[tuple]) -> str:
    objects = "".join(f"<object><name>person</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0"
                      f"</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax>"
                      f"</bndbox></object>" for b in boxes)
    return (f"<annotation><folder>LLVIP</folder><filename>{name}.jpg</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>")


def write_llvip(root: Path) -> Dict:
    """infrared/test/*.jpg (3-channel JPEG, as LLVIP stores them), visible/test/ and Annotations/."""
    boxes = {"190001": [(10, 12, 30, 60), (40, 10, 58, 50)], "190002": [(5, 5, 25, 45)], "190003": []}
    for name, bb in boxes.items():
        for kind in ("infrared", "visible"):
            (root / kind / "test").mkdir(parents=True, exist_ok=True)
            arr = np.random.default_rng(int(name)).integers(0, 255, (80, 100, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / kind / "test" / f"{name}.jpg")
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml(name, (100, 80), bb))
    return {"root": root, "persons": 3}


def write_ego4d(root: Path) -> Dict:
    """ego4d.json, v2/annotations/narration.json and v2/imu/<uid>.csv (Ego4D's column names)."""
    scen = {"u1": ["Cooking"], "u2": ["Playing cards"], "u3": ["Cooking", "Cleaning"], "u4": ["Carpenter"]}
    meta = {"videos": [{"video_uid": u, "scenarios": s, "has_imu": u != "u4"} for u, s in scen.items()]}
    (root / "v2" / "annotations").mkdir(parents=True)
    (root / "v2" / "imu").mkdir(parents=True)
    (root / "ego4d.json").write_text(json.dumps(meta))
    narr = {u: {"narration_pass_1": {"narrations": [{"timestamp_sec": t, "narration_text": "#C C does"}
                                                    for t in (3.0, 6.5, 19.0)]}} for u in scen}
    (root / "v2" / "annotations" / "narration.json").write_text(json.dumps(narr))
    for u in ("u1", "u2", "u3"):
        t = np.arange(0, 20.0, 1 / 200)  # 200 Hz for 20 s: the 19 s narration's window leaves it
        rows = [[0, int(x * 1000), x * 1000, *np.sin(x + np.arange(3)), 9.8 + np.cos(x), 0.1, 0.2] for x in t]
        write_csv(root / "v2" / "imu" / f"{u}.csv", rows, ["component_idx", "component_timestamp_ms",
                                                            "canonical_timestamp_ms", "gyro_x", "gyro_y", "gyro_z",
                                                            "accl_x", "accl_y", "accl_z"])
    return {"root": root, "classnames": ["Cooking", "Playing cards"]}


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------

def write_kinetics(root: Path) -> Dict:
    rows = [("abseiling", "k0000000001", 10, 20, "val"), ("air drumming", "k0000000002", 0, 10, "val"),
            ("abseiling", "k0000000003", 5, 15, "val")]
    write_csv(root / "annotations" / "val.csv", rows, ["label", "youtube_id", "time_start", "time_end", "split"])
    for i, (label, ytid, s, e, _) in enumerate(rows[:2]):
        video(root / "val" / label / f"{ytid}_{s:06d}_{e:06d}.mp4", seed=i)
    return {"root": root, "n": 2, "classnames": ["abseiling", "air drumming"]}


def write_msrvtt(root: Path) -> Dict:
    rows = [(f"ret{i}", f"msr{7010 + i}", f"video{7010 + i}", f"a person does thing {i}") for i in range(3)]
    write_csv(root / "msrvtt_data" / "MSRVTT_JSFUSION_test.csv", rows, ["key", "vid_key", "video_id", "sentence"])
    for i in range(3):
        video(root / "MSRVTT" / "videos" / "all" / f"video{7010 + i}.mp4", seed=i)
    return {"root": root, "n": 3}
