"""Video: decoding files and folders with PyAV, clip/frame sampling by timestamp, the pooled and
temporal encoders on a (random) anchor, save/load, bad inputs, and the digits-world renderer."""
from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

import binder
from binder.errors import BinderConfigError, BinderInputError
from binder.model import BindModel
from binder.registry import build_config
from binder.types import Modality
from binder.datasets.render_video import CANVAS, FPS, FRAMES, render
from helpers import SMALL_ENCODER
from binder.modalities.video import VideoConfig, clip_times

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = binder.get_modality("video")


def write_video(path: Path, frames: np.ndarray, fps: int, codec: str, pix_fmt: str = "yuv420p",
                gop: int = 12) -> Path:
    """Encode uint8 (T, H, W, 3) frames with PyAV; skips the test if the codec is missing."""
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"FFmpeg here has no {codec} encoder")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.gop_size, stream.bit_rate = gop, 20_000_000
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


def grey_ramp(n: int, h: int = 32, w: int = 48, step: int = 2) -> np.ndarray:
    """Uniform grey frames whose brightness encodes the frame index: frame i = step * i."""
    return (np.repeat((np.arange(n) * step).astype(np.uint8)[:, None, None, None], 3, -1)
            * np.ones((1, h, w, 1), np.uint8))


def full_decode(path: Path) -> tuple:
    """Every frame of the file and its time from the start: the reference for seeking."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        start = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
    return np.array([t - start for t, _ in frames]), np.stack([a for _, a in frames])


@pytest.fixture(scope="module")
def pre(random_anchor):
    """ImageBind's sampling (5 clips of 2 s, 2 frames each) on the random anchor's 28 x 28 frames."""
    p = SPEC.preprocessor_cls(VideoConfig(clips_per_sample=5))
    p.attach_anchor(random_anchor)
    return p


# ----------------------------------------------------------------------------------------------
# Files and folders
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, codec", [("mp4", "libx264"), ("mp4", "mpeg4"), ("avi", "mpeg4"),
                                           ("avi", "mjpeg"), ("webm", "libvpx")])
def test_decode_files_by_timestamp(pre, tmp_path, suffix, codec):
    """6 s at 5 fps, brightness = 8 x frame index: 5 clips of 2 s at 0, 1, 2, 3, 4 s, each
    with its first and last frame (ImageBind's constant clips + uniform temporal subsample)."""
    pix = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    path = write_video(tmp_path / f"ramp.{suffix}", grey_ramp(30, step=8), 5, codec, pix)
    clips = pre.sample(path)  # (K, T, H, W, 3) uint8
    assert clips.shape == (5, 2, 32, 48, 3) and clips.dtype == np.uint8
    expected = np.array([[0, 9], [5, 14], [10, 19], [15, 24], [20, 29]])
    index = clips.reshape(5, 2, -1).mean(-1) / 8  # brightness -> frame index (lossy codecs: a few levels off)
    assert np.abs(index - expected).max() < 0.5, index
    x = pre(path)
    assert x.shape == (5, 2, 3, 28, 56) and x.dtype == torch.float32
    torch.testing.assert_close(x, pre(str(path)))
    # Normalised with the anchor's mean/std: frame value v -> (v / 255 - mean) / std.
    mean, std = torch.tensor(pre.spec.mean), torch.tensor(pre.spec.std)
    v = torch.from_numpy(clips[1, 0, 0, 0].astype(np.float32)) / 255
    torch.testing.assert_close(x[1, 0, :, 14, 14], (v - mean) / std, atol=1e-3, rtol=0)


def test_seeking_matches_full_decode(pre, tmp_path):
    """A 30 s file with keyframes every 12 frames: frames found by seeking are exactly the
    decoded frames nearest each target time, in eval and train mode."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (300, 16, 16, 3), dtype=np.uint8)
    frames[:, :8] = grey_ramp(300, 8, 16, 1) // 2  # a half with a smooth index code
    path = write_video(tmp_path / "long.mp4", frames, 10, "mpeg4", gop=12)
    times, decoded = full_decode(path)
    assert len(decoded) == 300
    for train in (False, True):
        torch.manual_seed(3)
        got = pre.sample(path, train=train)
        torch.manual_seed(3)
        want_t = clip_times(30.0, 10.0, 1 if train else 5, 2, 2.0, train)
        idx = np.abs(times[None, None] - want_t[..., None]).argmin(-1)
        np.testing.assert_array_equal(got, decoded[idx])
    assert idx[0, 1] - idx[0, 0] == 19


def test_train_mode_one_random_clip(pre):
    video = grey_ramp(100)
    torch.manual_seed(0)
    draws = [pre.sample(video, sample_rate=10, train=True) for _ in range(6)]
    assert all(d.shape == (1, 2, 32, 48, 3) for d in draws)
    starts = [int(d[0, 0, 0, 0, 0]) // 2 for d in draws]
    ends = [int(d[0, 1, 0, 0, 0]) // 2 for d in draws]
    assert all(e - s == 19 for s, e in zip(starts, ends))  # 2 s clips: first and last frame
    assert len(set(starts)) > 1 and all(0 <= s <= 80 for s in starts)
    assert pre(video, sample_rate=10, train=True).shape == (1, 2, 3, 28, 56)


def test_short_video_and_single_frame(pre):
    """Shorter than a clip: every clip is the whole video; one frame: repeated."""
    clips = pre.sample(grey_ramp(6), sample_rate=10)  # 0.6 s
    np.testing.assert_array_equal(clips[:, :, 0, 0, 0] // 2, np.tile([0, 5], (5, 1)))
    one = pre(np.full((1, 20, 20, 3), 200, np.uint8))
    assert one.shape == (5, 2, 3, 28, 56) and torch.equal(one[0, 0], one[4, 1])


def test_frame_folder_equals_array(pre, tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (12, 30, 40, 3), dtype=np.uint8)
    for i, f in enumerate(frames):  # natural order: f_2 before f_10
        Image.fromarray(f).save(tmp_path / f"f_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    torch.testing.assert_close(pre(tmp_path), pre(frames), rtol=0, atol=0)
    torch.testing.assert_close(pre(tmp_path, sample_rate=2), pre((frames, 2)), rtol=0, atol=0)
    assert not torch.equal(pre(tmp_path, sample_rate=2), pre(frames))


def test_inputs_of_any_length_and_size_batch(pre):
    rng = np.random.default_rng(2)
    items = [
        rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8),
        rng.integers(0, 256, (50, 64, 48, 3), dtype=np.uint8),
        rng.random((7, 28, 28, 3), dtype=np.float32),  # float in [0, 1]
        torch.rand(9, 3, 40, 24),  # channels-first tensor
        [Image.fromarray(rng.integers(0, 256, (25, 35), dtype=np.uint8)) for _ in range(4)],  # PIL (grey)
        ([rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)] * 3, 30),  # list of arrays + fps
    ]
    batch = torch.stack([pre(x) for x in items])
    assert batch.shape == (len(items), 5, 2, 3, 28, 56) and torch.isfinite(batch).all()


def test_tensor_layouts_and_dtypes_agree(pre):
    video = np.random.default_rng(3).integers(0, 256, (8, 20, 24, 3), dtype=np.uint8)
    ref = pre(video)
    torch.testing.assert_close(pre(torch.from_numpy(video)), ref)
    torch.testing.assert_close(pre(torch.from_numpy(video).permute(0, 3, 1, 2)), ref)
    torch.testing.assert_close(pre(video.astype(np.float32) / 255), ref)
    torch.testing.assert_close(pre([Image.fromarray(f) for f in video]), ref)


def test_frames_match_the_anchor_image_transform(pre, random_anchor):
    """A frame goes through the same resize/crop/normalise as an image through the anchor."""
    rng = np.random.default_rng(4)
    for h, w in ((28, 28), (56, 70)):
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if h > 28:  # smooth content: PIL and torch bicubic differ only by rounding then
            frame = np.asarray(Image.fromarray(frame).resize((7, 7)).resize((w, h), Image.BILINEAR))
        ours = pre(frame[None])[0, 0]
        theirs = random_anchor.preprocess_image(Image.fromarray(frame))
        assert (ours - theirs).abs().mean() < (1e-5 if h == 28 else 0.02)


# ----------------------------------------------------------------------------------------------
# Encoders and BindModel
# ----------------------------------------------------------------------------------------------

def _video(seed: int = 0) -> np.ndarray:
    digit = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    return render(digit, np.random.default_rng(seed))


@torch.no_grad()
def test_pooled_is_mean_of_anchor_frame_embeddings(random_anchor):
    model = BindModel(random_anchor, {"video": {"mode": "pooled"}}).eval()
    assert isinstance(model.heads["video"], torch.nn.Identity)
    assert model.trainable_parameters() == [] and len(model.encoders["video"].state_dict()) == 0
    x = model.preprocessors[Modality.VIDEO](_video())  # (K, T, 3, H, W)
    assert x.shape[:2] == (3, 2)
    z = model.encode("video", x[None])
    frames = random_anchor.encode_image(x.flatten(0, 1)).reshape(3, 2, -1)  # (K, T, D)
    per_clip = F.normalize(frames.mean(1), dim=-1)
    torch.testing.assert_close(z[0], F.normalize(per_clip.mean(0), dim=-1))
    out = model.embed(video=[_video(0), _video(1)], progress=False, device="cpu")["video"]
    torch.testing.assert_close(out[0], z[0])


def test_temporal_holds_no_anchor_weights(random_anchor):
    torch.manual_seed(0)
    model = BindModel(random_anchor, {"video": {"encoder": SMALL_ENCODER}})
    encoder = model.encoders["video"]
    assert encoder.anchor is random_anchor
    assert all(k.split(".")[0] in {"cls_token", "pos_embed", "frame_proj", "blocks", "norm"}
               for k in encoder.state_dict())
    assert encoder.frame_proj.in_features == random_anchor.embed_dim
    assert encoder.output_dim == SMALL_ENCODER["width"] and len(encoder.blocks) == SMALL_ENCODER["depth"]
    anchor_ids = {id(p) for p in random_anchor.parameters()}
    trainable = model.trainable_parameters()
    assert trainable and not anchor_ids & {id(p) for p in trainable}
    assert {id(p) for p in encoder.parameters()}.isdisjoint(anchor_ids)
    # Gradients reach the temporal transformer, never the frozen anchor.
    x = model.preprocessors[Modality.VIDEO](_video(), train=True)[None]  # (1, 1, T, 3, H, W)
    model.train()
    model.encode("video", x).sum().backward()
    assert encoder.frame_proj.weight.grad is not None and encoder.frame_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in random_anchor.parameters())


@pytest.mark.parametrize("mode", ["temporal", "pooled"])
def test_save_load_round_trip(anchor_file, tmp_path, mode):
    from binder.anchor import build_anchor

    anchor = build_anchor({"model": "binder-digits", "pretrained": str(anchor_file)})
    torch.manual_seed(0)
    model = BindModel(anchor, {"video": {"mode": mode, "encoder": SMALL_ENCODER}}).eval()
    videos = [_video(0), _video(1)]
    before = model.embed(video=videos, progress=False, device="cpu")["video"]
    folder = binder.save(model, tmp_path / "model")
    loaded = binder.load(folder)
    assert not any(k.startswith("encoders.video.") and "anchor" in k for k in loaded.state_dict())
    assert loaded.encoders["video"].anchor is loaded.anchor
    torch.testing.assert_close(loaded.embed(video=videos, progress=False, device="cpu")["video"], before)


def test_encoder_rejects_wrong_clip_shapes(random_anchor):
    model = BindModel(random_anchor, {"video": {"encoder": SMALL_ENCODER}})
    encoder = model.encoders["video"]
    with pytest.raises(ValueError, match="3, 28, 56"):
        encoder(torch.zeros(2, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="2, 3"):
        encoder(torch.zeros(2, 3, 3, 28, 56))  # the temporal model was built for 2 frames
    with pytest.raises(BinderInputError, match="anchor"):
        SPEC.encoder_cls(VideoConfig(mode="pooled"))(torch.zeros(1, 2, 3, 224, 224))


def test_config_validation():
    assert build_config("video", {}) == VideoConfig()
    with pytest.raises(BinderConfigError, match="mode"):
        VideoConfig(mode="3d")
    with pytest.raises(BinderConfigError, match="preset"):
        VideoConfig(preset="huge")
    with pytest.raises(BinderConfigError, match="frames_per_clip"):
        VideoConfig(frames_per_clip=0)
    with pytest.raises(BinderConfigError, match="patch"):
        SPEC.encoder_cls(VideoConfig(encoder={"patch": 16}))
    with pytest.raises(BinderConfigError, match="patch"):
        build_config("video", {"encoder": {"patch": 16}})


# ----------------------------------------------------------------------------------------------
# Bad inputs raise one BinderInputError naming the input
# ----------------------------------------------------------------------------------------------

def test_bad_files(pre, tmp_path):
    missing = tmp_path / "nope.mp4"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    audio = tmp_path / "sound.wav"
    sf.write(audio, np.zeros(1600, np.float32), 16000)
    for path, match in ((missing, "does not exist"), (corrupt, "not a readable video"), (empty, "not a readable video"),
                        (audio, "no video stream")):
        with pytest.raises(BinderInputError, match=match) as err:
            pre(path)
        assert str(path) in str(err.value)


def test_bad_folders(pre, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BinderInputError, match="no image files") as err:
        pre(empty)
    assert str(empty) in str(err.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(broken / "0.png")
    (broken / "1.png").write_bytes(b"not a png")
    with pytest.raises(BinderInputError, match="1.png") as err:
        pre(broken)
    assert str(broken) in str(err.value)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(mixed / "0.png")
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(mixed / "1.png")
    with pytest.raises(BinderInputError, match="differ in size"):
        pre(mixed)


@pytest.mark.parametrize(
    "item, match",
    [
        (np.full((4, 8, 8, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 8, 8, 3), np.inf, np.float32), "infinite"),
        (np.zeros((4, 8, 8, 4), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((8, 8, 3), np.uint8), r"\(T, H, W, 3\)"),
        (np.zeros((4, 8, 8, 3), np.int32), "dtype"),
        (np.zeros((4, 8, 8, 3), bool), "dtype"),
        (np.full((4, 8, 8, 3), 255.0, np.float32), r"\[0, 1\]"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        ([], "empty"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], "differ in shape"),
        ({"frames": 1}, "expected a file"),
        ((np.zeros((4, 8, 8, 3), np.uint8), 0), "frame rate"),
    ],
    ids=["nan", "inf", "4-channels", "3d", "int32", "bool", "float-0-255", "no-frames", "empty-list", "ragged",
         "dict", "zero-fps"],
)
def test_bad_arrays(pre, item, match):
    with pytest.raises(BinderInputError, match=match) as err:
        pre(item)
    assert "video input" in str(err.value)


# ----------------------------------------------------------------------------------------------
# The digits-world renderer
# ----------------------------------------------------------------------------------------------

def _centroids(video: np.ndarray) -> np.ndarray:
    """Ink centre of mass (T, 2) of each frame, background removed."""
    g = video.astype(np.float32).mean(-1)
    g = np.clip(g - np.median(g, axis=(1, 2), keepdims=True) - 20, 0, None)  # (T, H, W)
    ys, xs = np.mgrid[: g.shape[1], : g.shape[2]]
    total = g.sum((1, 2))
    return np.stack([(g * ys).sum((1, 2)) / total, (g * xs).sum((1, 2)) / total], -1)


def test_renderer_shape_determinism_and_motion(data_root):
    from binder.datasets.mnist import load_mnist

    digits, _ = load_mnist(data_root / "mnist", "t10k")
    video = render(digits[0], np.random.default_rng(7))
    assert video.shape == (FRAMES, CANVAS, CANVAS, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(video, render(digits[0], np.random.default_rng(7)))
    assert not np.array_equal(video, render(digits[0], np.random.default_rng(8)))
    moved = [np.abs(np.diff(_centroids(render(d, np.random.default_rng(i))), axis=0)).sum()
             for i, d in enumerate(digits[:10])]
    assert min(moved) > 1.0, moved  # the digit moves (pixels of centroid path over the clip)
    frame_change = np.abs(video[1:].astype(int) - video[:-1].astype(int)).mean()
    assert frame_change > 2.0
    assert video.mean() > 5 and video.max() > 100  # visible ink on a dark card
    start = time.perf_counter()
    for i in range(50):
        render(digits[i], np.random.default_rng(i))
    assert (time.perf_counter() - start) / 50 < 0.02  # a few ms per video (loose bound for shared CPUs)
    assert pytest.approx(FPS) == VideoConfig().fps  # arrays are read at the renderer's rate


# ----------------------------------------------------------------------------------------------
# Training with mode=pooled skips fitting (slow: builds the data module and evaluates)
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pooled_run_evaluates_without_training(compose, tiny_anchor, data_root, tmp_path):
    from binder.training import train

    cfg = compose(["modality=video", "modality.video.mode=pooled", f"data.root={data_root}", f"run_dir={tmp_path}",
                   "trainer.enable_progress_bar=false"])
    metrics = train(cfg)
    row = metrics["zero_shot"]["video->text (emergent)"]
    assert row["n"] == 2000
    # The saved model (nothing trained: the anchor's frames) classifies the same renders the same way.
    from binder.datasets.digits import CLASSNAMES, TEMPLATES, DigitsConfig, DigitsWorld
    from binder.datasets.instances import render_fixed
    from binder.datasets.render_video import render
    from binder.evaluation import zero_shot

    world = DigitsWorld(DigitsConfig(root=str(data_root)))
    idx = world.image_indices("test")[:200]
    items = render_fixed(render, world.images[idx], DigitsConfig().seed)
    again = zero_shot(binder.load(tmp_path / "model"), "video", items, world.labels[idx], CLASSNAMES, TEMPLATES)
    assert again["n"] == 200 and again["chance"] == pytest.approx(10.0)
    assert not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "model" / "config.json").is_file()


# ----------------------------------------------------------------------------------------------
# ImageBind's spatial crops (imagebind/data.py: ShortSideScale(224) then SpatialCrop(224, 3))
# ----------------------------------------------------------------------------------------------

def test_three_spatial_crops_along_the_long_side():
    from binder.modalities.video import resize_crops

    x = torch.linspace(0, 1, 50).expand(2, 3, 28, 50).contiguous()  # (N, 3, 28, 50): a left-right ramp
    views = resize_crops(x, (28, 28), crops=3, mode="bilinear")  # no resize needed: short side is 28
    assert views.shape == (3, 2, 3, 28, 28)
    torch.testing.assert_close(views[0], x[..., :28])  # left
    torch.testing.assert_close(views[1], x[..., 11:39])  # centre: ceil((50 - 28) / 2) = 11
    torch.testing.assert_close(views[2], x[..., 22:])  # right
    portrait = x.transpose(-1, -2).contiguous()  # (N, 3, 50, 28): crops run down the height
    down = resize_crops(portrait, (28, 28), crops=3, mode="bilinear")
    torch.testing.assert_close(down[2], portrait[..., 22:, :])
    one = resize_crops(x, (28, 28))  # the default: one centre crop
    assert one.shape == (1, 2, 3, 28, 28)
    torch.testing.assert_close(one[0], x[..., 11:39])


@pytest.fixture(scope="module")
def square_anchor(tmp_path_factory):
    """A square 28 x 28 anchor with CLIP's resize + centre crop (like ImageBind's 224 x 224 one)."""
    import json

    import open_clip

    from binder.anchor import OpenClipAnchor, register_open_clip_configs

    register_open_clip_configs()
    cfg = dict(open_clip.get_model_config("binder-digits"))
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": 28}
    path = tmp_path_factory.mktemp("square") / "binder-square-test.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return OpenClipAnchor(model="binder-square-test")


def test_imagebind_video_views(square_anchor, random_anchor):
    """ImageBind's loader: 5 clips x 3 spatial crops = 15 views of 2 frames each; a wide video's
    three crops differ, and the clips follow the ramp in time. Three crops need a resize + crop
    anchor: with binder's letterboxing digits anchor they are refused, not silently dropped."""
    from binder.imagebind.model import video_preprocessor

    with pytest.raises(BinderConfigError, match="spatial_crops=3"):
        video_preprocessor(random_anchor)((np.zeros((30, 28, 84, 3), np.uint8), 5.0))
    pre = video_preprocessor(square_anchor)
    assert (pre.cfg.clips_per_sample, pre.cfg.frames_per_clip, pre.cfg.spatial_crops) == (5, 2, 3)
    frames = np.zeros((30, 28, 84, 3), np.uint8)
    frames[:, :, :28], frames[:, :, 28:56], frames[:, :, 56:] = 40, 120, 200  # left, middle, right thirds
    x = pre((frames, 5.0))
    assert x.shape == (15, 2, 3, 28, 28)
    crops = rearrange_views(x)  # (5, 3, ...)
    assert (crops[:, 0] < crops[:, 1]).all() and (crops[:, 1] < crops[:, 2]).all()
    with pytest.raises(BinderConfigError, match="spatial_crops"):
        VideoConfig(spatial_crops=2)


def rearrange_views(x: torch.Tensor) -> torch.Tensor:
    """(clips * 3, T, 3, H, W) -> per-view mean brightness (clips, 3), clip-major like ImageBind."""
    return x.mean(dim=(1, 2, 3, 4)).reshape(-1, 3)
