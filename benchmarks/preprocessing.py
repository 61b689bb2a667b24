"""binder's audio and video preprocessing against ImageBind's own loaders, on one thread.

ImageBind's reference ``imagebind/data.py`` (``imagebind-unofficial==0.1.1`` with its
``pytorchvideo==0.1.5``, installed by ``.ci/run``; run with the same three shims as
``tests/test_imagebind_fidelity.py``: soundfile for ``torchaudio.load``, PyAV for decord and the
removed torchvision module aliased) and binder's preprocessors set up as ImageBind's route
(``preset: imagebind``: 3 clips of 2 s at 16 kHz, 128-bin Kaldi filterbanks; video: 5 clips of 2
frames, short side 224, 3 spatial crops), on the same files, interleaved, one thread:

* audio on FSDD (8 kHz mono digits, 0.3-1.3 s) and on 5 s 44.1 kHz stereo recordings (ImageBind's
  example sounds are of this kind), milliseconds per recording;
* video on generated MPEG-4 files (10 s, 30 fps, 640 x 360), frames delivered per second.

Every output is checked against the reference's (max absolute difference) before it is timed.
Prints a table with the ratios and writes ``benchmarks/preprocessing.json``.

    python benchmarks/preprocessing.py                   # FSDD from $BINDER_DATA or ../shared/data
    python benchmarks/preprocessing.py --files 50 --videos 3
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402


def reference_data() -> types.ModuleType:
    """ImageBind's ``imagebind.data`` with the fidelity tests' shims (nothing it computes changes)."""
    import torchvision.transforms.functional as tvf

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tvf)
    spec = importlib.util.find_spec("imagebind")
    if spec is None or importlib.util.find_spec("pytorchvideo") is None:
        raise SystemExit("needs ImageBind's reference code: pip install --no-deps imagebind-unofficial==0.1.1 "
                         "pytorchvideo==0.1.5 iopath==0.1.10 portalocker")
    package = types.ModuleType("imagebind")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["imagebind"] = package
    data = importlib.import_module("imagebind.data")

    def load(path, *args, **kwargs):
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(wave.T)), rate

    data.torchaudio = types.SimpleNamespace(load=load, functional=data.torchaudio.functional,
                                            compliance=data.torchaudio.compliance)
    real = data.EncodedVideo.from_path
    data.EncodedVideo = types.SimpleNamespace(
        from_path=lambda path, decoder="pyav", sample_rate=None, **kw: real(path, decoder="pyav", **kw))
    return data


def stereo_recordings(folder: Path, count: int) -> List[Path]:
    """5 s 44.1 kHz stereo 16-bit recordings: a chirp per channel, noise and a small offset."""
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        t = np.arange(5 * 44100) / 44100
        wave = np.stack([0.3 * np.sin(2 * np.pi * ((200 + 50 * i) * (c + 1) * t + 300 * t ** 2))
                         + 0.02 * rng.normal(size=t.shape) + 0.01 * (c + 1) for c in range(2)], axis=1)
        paths.append(folder / f"s{i}.wav")
        sf.write(paths[-1], wave.astype(np.float32), 44100, subtype="PCM_16")
    return paths


def videos(folder: Path, count: int, seconds: float = 10.0, fps: int = 30, size=(360, 640)) -> List[Path]:
    """MPEG-4 videos: a moving gradient with a bright square."""
    import av

    h, w = size
    paths = []
    y, x = np.mgrid[0:h, 0:w]
    for v in range(count):
        paths.append(folder / f"v{v}.mp4")
        with av.open(str(paths[-1]), "w") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for i in range(int(seconds * fps)):
                frame = np.stack([(x + i * 7 + v) % 256, (y + i * 3) % 256, np.full_like(x, (i * 20) % 256)], -1)
                frame[20 + i % 200 : 80 + i % 200, 40:100] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return paths


def timed(fn: Callable[[Any], Any], items: List[Any], rounds: int) -> float:
    """Best of ``rounds`` passes over ``items`` -> seconds per item."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items))
    return best


def compare(name: str, ours: Callable, theirs: Callable, items: List[Any], rounds: int, unit: str,
            per_item: float = 1.0) -> Dict[str, Any]:
    """Check equality on every item, then time both (interleaved rounds)."""
    diff = max(float((ours(x) - theirs(x)).abs().max()) for x in items)
    t_ours = t_theirs = float("inf")
    for _ in range(rounds):  # interleaved: the same conditions for both
        t_theirs = min(t_theirs, timed(theirs, items, 1))
        t_ours = min(t_ours, timed(ours, items, 1))
    row = {"workload": name, "items": len(items), "max_abs_diff": diff, "imagebind_s": t_theirs, "binder_s": t_ours,
           "speedup": t_theirs / t_ours}
    if unit == "frames/s":
        row.update(imagebind_fps=per_item / t_theirs, binder_fps=per_item / t_ours)
        print(f"{name:<40} ImageBind {per_item / t_theirs:8.1f} frames/s  binder {per_item / t_ours:8.1f} frames/s  "
              f"x{t_theirs / t_ours:.2f}  (max |diff| {diff:.1e})", flush=True)
    else:
        print(f"{name:<40} ImageBind {1e3 * t_theirs:7.2f} ms  binder {1e3 * t_ours:7.2f} ms  "
              f"x{t_theirs / t_ours:.2f}  (max |diff| {diff:.1e})", flush=True)
    return row


class _FrameSpec:
    """What the video preprocessor reads from an anchor: ImageBind's 224 x 224 CLIP transform."""

    def image_config(self) -> Any:
        from binder.anchor import ImageConfig

        return ImageConfig()

    def preprocess_image(self, image: Any) -> torch.Tensor:  # not used: the transform is vectorised
        raise NotImplementedError


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200, help="FSDD recordings (and a quarter as many 5 s ones)")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_name("preprocessing.json")))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import binder
    from binder.imagebind.model import video_preprocessor

    ref = reference_data()
    spec = binder.get_modality("audio")
    audio = spec.preprocessor_cls(spec.config_cls(preset="imagebind"))
    root = Path(os.environ.get("BINDER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    fsdd = sorted((root / "fsdd" / "recordings").glob("*.wav"))[: args.files]
    rows = []
    theirs_audio = lambda p: ref.load_and_transform_audio_data([str(p)], "cpu")[0]  # noqa: E731
    if fsdd:
        rows.append(compare(f"audio: FSDD ({len(fsdd)} recordings, 8 kHz)", audio, theirs_audio, fsdd, args.rounds,
                            "ms"))
    else:
        print(f"no FSDD under {root}: skipping it (set BINDER_DATA)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        stereo = stereo_recordings(Path(tmp), max(4, args.files // 4))
        rows.append(compare(f"audio: 5 s 44.1 kHz stereo ({len(stereo)})", audio, theirs_audio, stereo, args.rounds,
                            "ms"))
        clips = videos(Path(tmp), args.videos)
        video = video_preprocessor(_FrameSpec())
        ours_video = lambda p: video(p).permute(0, 2, 1, 3, 4)[None]  # noqa: E731  (ImageBind's layout)
        theirs_video = lambda p: ref.load_and_transform_video_data([str(p)], "cpu")  # noqa: E731
        frames = 10 * 30  # frames each video holds
        rows.append(compare(f"video: 10 s 30 fps 640x360 ({len(clips)})", ours_video, theirs_video, clips,
                            args.rounds, "frames/s", per_item=frames))
    Path(args.out).write_text(json.dumps({"threads": 1, "rows": rows}, indent=2))
    worst = min(r["speedup"] for r in rows)
    print(f"\nslowest ratio: binder is {worst:.2f}x ImageBind's loader")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
