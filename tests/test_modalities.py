"""Every registered modality: config, preprocessor and encoder interface, BindModel outputs.

Then audio in detail: accepted inputs, bad inputs, and preprocessing against ImageBind's recipe.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

import binder
from binder.errors import BinderConfigError, BinderInputError
from binder.model import BindModel
from binder.registry import build_config, check_modality, config_to_dict
from helpers import SMALL_ENCODER, chirp, sine

REPO_ROOT = Path(__file__).resolve().parent.parent

MODALITIES = binder.list_modalities()  # built-in and installed plugins: every test below covers each


def test_registry_lists_audio_and_rejects_unknown():
    assert {"audio", "depth", "thermal", "imu", "video"} <= set(MODALITIES)
    assert binder.list_modalities("au*") == ["audio"]
    assert binder.list_modalities("zz*") == []
    with pytest.raises(BinderInputError, match="smell"):
        binder.get_modality("smell")
    with pytest.raises(BinderInputError, match="anchor"):  # a modality served by the anchor
        binder.get_modality("image")


def _sample(name: str):
    spec = binder.get_modality(name)
    if spec.example_input is None:
        pytest.fail(f"modality {name!r} registers no example_input: the generic tests need one")
    return spec.example_input()


def _small_config(name: str, **encoder):
    return build_config(name, {"encoder": {**SMALL_ENCODER, **encoder}})


@pytest.fixture(params=MODALITIES)
def modality(request) -> str:
    return request.param


def test_spec_is_complete(modality):
    spec = binder.get_modality(modality)
    assert spec.name == modality and modality not in ("image", "text")
    cfg = spec.config_cls()
    assert cfg.temperature > 0
    assert spec.example_input is not None


def test_config_json_round_trip(modality):
    cfg = _small_config(modality)
    values = json.loads(json.dumps(config_to_dict(cfg)))
    assert build_config(modality, values) == cfg
    with pytest.raises(BinderConfigError, match="no_such_field"):
        build_config(modality, {**values, "no_such_field": 1})
    with pytest.raises(BinderConfigError, match="temperature"):
        build_config(modality, {**values, "temperature": "warm"})


def test_composed_config_is_the_dataclass(modality, compose, tmp_path):
    """``modality=<name>`` composes to the dataclass defaults; overrides are checked by the schema."""
    cfg = compose([f"modality={modality}", f"run_dir={tmp_path}"])
    assert list(cfg.modality) == [modality]
    assert build_config(modality, cfg.modality[modality]) == binder.get_modality(modality).config_cls()
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose([f"modality={modality}", f"modality.{modality}.no_such_key=1"])


def test_preprocessor_output(modality):
    spec = binder.get_modality(modality)
    cfg = _small_config(modality)
    pre = spec.preprocessor_cls(cfg)
    x = pre(_sample(modality))
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    encoder = spec.encoder_cls(cfg)
    assert x.ndim == encoder.input_ndim  # (K clips, ...) = one sample of the encoder's batch rank
    x1 = pre(_sample(modality), train=True)
    assert x1.shape[1:] == x.shape[1:]


@torch.no_grad()
def test_encoder_interface(modality):
    spec = binder.get_modality(modality)
    cfg = _small_config(modality)
    torch.manual_seed(0)
    encoder = spec.encoder_cls(cfg).eval()
    x = spec.preprocessor_cls(cfg)(_sample(modality))  # (K, ...): K clips act as a batch
    tokens = encoder.forward_features(x)
    assert tokens.ndim == 3 and tokens.shape[0] == x.shape[0]
    pooled = encoder.forward_head(tokens)
    assert pooled.shape == (x.shape[0], encoder.output_dim)
    assert encoder.output_dim == SMALL_ENCODER["width"]
    torch.testing.assert_close(encoder(x), pooled)
    encoder.set_grad_checkpointing(True)
    torch.testing.assert_close(encoder(x), pooled)
    encoder.set_grad_checkpointing(False)
    with pytest.raises((ValueError, BinderInputError)):
        encoder(x[..., :-1])  # wrong input size is refused, not silently accepted


def test_grad_checkpointing_matches_in_training(modality):
    """With dropout/drop-path off, checkpointed training gives the same loss and gradients."""
    spec = binder.get_modality(modality)
    cfg = _small_config(modality, drop_path=0.0, depth=2)
    torch.manual_seed(0)
    encoder = spec.encoder_cls(cfg).train()
    x = spec.preprocessor_cls(cfg)(_sample(modality))

    def grads(checkpointing: bool):
        encoder.zero_grad()
        encoder.set_grad_checkpointing(checkpointing)
        out = encoder(x).square().sum()
        out.backward()
        return out.detach(), [p.grad.clone() for p in encoder.parameters()]

    loss_a, grads_a = grads(False)
    loss_b, grads_b = grads(True)
    torch.testing.assert_close(loss_a, loss_b)
    assert any(g.abs().sum() > 0 for g in grads_a)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture
def bind_model(modality, random_anchor):
    torch.manual_seed(0)
    return BindModel(random_anchor, {modality: _small_config(modality)}).eval()


@torch.no_grad()
def test_bind_model_embeddings(modality, bind_model):
    m = modality
    pre = bind_model.preprocessors[m]
    one = pre(_sample(modality))  # (K, ...)
    x = one[:1].repeat(2, *[1] * (one.ndim - 1)) + torch.randn(2, *one.shape[1:]) * 0.1  # (2, ...)
    z = bind_model.encode(m, x)
    assert z.shape == (2, bind_model.anchor.embed_dim)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(z[0], z[1])  # different inputs, different embeddings
    out = bind_model({modality: x})
    assert set(out) == {m}
    torch.testing.assert_close(out[modality], z)


@torch.no_grad()
def test_bind_model_averages_clips(modality, bind_model):
    m = modality
    one = bind_model.preprocessors[m](_sample(modality))  # (K, ...)
    torch.manual_seed(0)
    if one.shape[0] == 1:  # a single-view modality: make a synthetic second clip
        one = torch.cat([one, one + torch.randn_like(one)])  # (K=2, ...)
    clips = torch.stack([one, one.flip(0) + 0.2 * torch.randn_like(one)])  # (N=2, K, ...)
    n, k = clips.shape[:2]
    assert k > 1
    z = bind_model.encode(m, clips)  # (N, K, ...) -> (N, D)
    per_clip = bind_model.encode(m, clips.flatten(0, 1)).reshape(n, k, -1)  # (N, K, D)
    expected = F.normalize(per_clip.mean(1), dim=-1)
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(n))
    assert not torch.allclose(z, per_clip[:, 0], atol=1e-4)  # really an average, not the first clip
    with pytest.raises(BinderInputError, match=modality):
        bind_model.encode(m, clips[None])  # one dim too many


def test_anchor_modalities_cannot_be_bound(random_anchor):
    with pytest.raises(BinderInputError, match="anchor"):
        BindModel(random_anchor, {"image": {}})


# ----------------------------------------------------------------------------------------------
# Audio: accepted inputs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audio_pre():
    spec = binder.get_modality("audio")
    return spec.preprocessor_cls(spec.config_cls())


AUDIO_SHAPE = (3, 1, 128, 204)


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_audio_sample_rates(audio_pre, rate):
    x = audio_pre((sine(seconds=1.0, rate=rate), rate))
    assert tuple(x.shape) == AUDIO_SHAPE
    assert torch.isfinite(x).all()


def test_audio_resampling_keeps_content(audio_pre):
    """The same tone at 8, 16 and 44.1 kHz gives nearly the same features once resampled."""
    ref = audio_pre((sine(1000, 1.0, 16000), 16000))
    for rate in (8000, 44100):
        x = audio_pre((sine(1000, 1.0, rate), rate))
        pad = (0 - (-4.268)) / 9.138
        valid = (ref[0, 0] - pad).abs().amax(0) > 1e-6  # frames that are not padding
        diff = (x[0, 0][:, valid] - ref[0, 0][:, valid]).abs().mean()
        assert diff < 0.1, f"{rate} Hz differs by {diff:.3f} after resampling"
    other = audio_pre((sine(3000, 1.0, 16000), 16000))
    assert (other - ref).abs().mean() > 0.1  # a different tone is clearly different


def test_audio_stereo_file_at_44k(audio_pre, tmp_path):
    wave = np.stack([sine(440, 1.0, 44100), sine(880, 1.0, 44100)], axis=1)  # (T, 2)
    path = tmp_path / "stereo.wav"
    sf.write(path, wave, 44100, subtype="FLOAT")
    assert sf.info(path).channels == 2
    x = audio_pre(path)
    assert tuple(x.shape) == AUDIO_SHAPE
    # Down-mixed to mono: same as passing the mean of the channels.
    mono = audio_pre((wave.mean(1).astype(np.float32), 44100))
    torch.testing.assert_close(x, mono, atol=1e-4, rtol=1e-4)
    # Channels-first arrays are accepted too.
    torch.testing.assert_close(audio_pre((wave.T.copy(), 44100)), x, atol=1e-4, rtol=1e-4)
    # ... and the mix is not just one channel.
    assert (audio_pre((wave[:, 0].copy(), 44100)) - x).abs().max() > 0.1


def test_audio_file_path_and_string(audio_pre, tmp_path):
    wave = chirp(1.5, 8000)
    path = tmp_path / "a.wav"
    sf.write(path, wave, 8000, subtype="PCM_16")
    from_path, from_str = audio_pre(path), audio_pre(str(path))
    torch.testing.assert_close(from_path, from_str)
    # Equal to the in-memory waveform up to 16-bit quantisation (tiny, in the quietest mel bins).
    diff = (from_path - audio_pre((wave, 8000))).abs()
    assert diff.mean() < 1e-3 and diff.max() < 0.05


def test_audio_very_short_and_very_long(audio_pre):
    short = audio_pre((np.full(10, 0.1, dtype=np.float32) * np.arange(10, dtype=np.float32), 16000))
    assert tuple(short.shape) == AUDIO_SHAPE and torch.isfinite(short).all()
    long = audio_pre((chirp(30.0, 16000), 16000))
    assert tuple(long.shape) == AUDIO_SHAPE and torch.isfinite(long).all()
    # 30 s of a chirp: the three clips come from different places and differ.
    assert (long[0] - long[2]).abs().mean() > 0.05


def test_audio_int16_pcm(audio_pre):
    wave = chirp(1.0, 16000)
    pcm = np.round(wave * 32767).astype(np.int16)
    x_int = audio_pre((pcm, 16000))
    x_float = audio_pre((pcm.astype(np.float32) / 32768.0, 16000))
    assert tuple(x_int.shape) == AUDIO_SHAPE
    # Scaled to [-1, 1]: unscaled PCM would be ~2.3 normalised units off (20 log-power nats).
    torch.testing.assert_close(x_int, x_float, atol=1e-3, rtol=0)


def test_audio_tensor_input(audio_pre):
    wave = chirp(1.0, 16000)
    torch.testing.assert_close(audio_pre(torch.from_numpy(wave), sample_rate=16000), audio_pre((wave, 16000)))
    torch.testing.assert_close(audio_pre(torch.from_numpy(wave)[None], sample_rate=16000), audio_pre((wave, 16000)))


def test_audio_train_mode_single_random_clip(audio_pre):
    wave = chirp(10.0, 16000)
    torch.manual_seed(0)
    draws = [audio_pre((wave, 16000), train=True) for _ in range(4)]
    assert all(tuple(d.shape) == (1, 1, 128, 204) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # random clip positions


def test_audio_augment_keeps_shape_and_padding():
    spec = binder.get_modality("audio")
    cfg = spec.config_cls()
    pre, aug = spec.preprocessor_cls(cfg), spec.augment_cls(cfg)
    x = pre((sine(440, 0.5), 16000), num_clips=1)[0]  # (1, 128, 204), ~50 valid frames
    torch.manual_seed(0)
    y = aug(x.clone())
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.equal(x, y)
    assert torch.isclose(y[..., -1], torch.full_like(y[..., -1], cfg.pad_value)).float().mean() > 0.5


# ----------------------------------------------------------------------------------------------
# Audio: bad inputs raise BinderInputError naming the input
# ----------------------------------------------------------------------------------------------

def test_audio_missing_file(audio_pre, tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(BinderInputError, match="does not exist") as err:
        audio_pre(path)
    assert str(path) in str(err.value)


def test_audio_corrupt_file(audio_pre, tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(BinderInputError, match="not readable audio") as err:
        audio_pre(path)
    assert str(path) in str(err.value)


def test_audio_empty_file(audio_pre, tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(BinderInputError) as err:
        audio_pre(path)
    assert str(path) in str(err.value)


def test_audio_valid_file_without_samples(audio_pre, tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(BinderInputError, match="empty") as err:
        audio_pre(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "samples, match",
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), "NaN"),
        (np.array([0.1, np.inf, 0.2] * 100, dtype=np.float32), "infinite"),
        (np.zeros((2, 2, 100), dtype=np.float32), "shape"),
        (np.zeros((16000, 2), dtype=np.float32), "channels"),  # channels-last would be 16000 channels
        (np.ones(100, dtype=bool), "dtype"),
        (np.ones(100, dtype=np.complex64), "dtype"),
        ([0.1, 0.2, 0.3], "numpy array"),
    ],
    ids=["empty", "nan", "inf", "3d", "channels-last", "bool", "complex", "list"],
)
def test_audio_bad_arrays(audio_pre, samples, match):
    with pytest.raises(BinderInputError, match=match) as err:
        audio_pre((samples, 16000))
    assert "audio input" in str(err.value)


def test_audio_bad_tensor(audio_pre):
    with pytest.raises(BinderInputError, match="NaN"):
        audio_pre(torch.tensor([0.0, float("nan")] * 200), sample_rate=16000)


def test_audio_waveform_needs_sample_rate(audio_pre):
    with pytest.raises(BinderInputError, match="sample rate") as err:
        audio_pre(sine())
    assert "audio input" in str(err.value)
    with pytest.raises(BinderInputError, match="sample rate"):
        audio_pre((sine(), 0))


def test_unknown_modality_names(random_anchor):
    with pytest.raises(BinderInputError, match="smell") as err:
        check_modality("smell")
    assert "audio" in str(err.value)  # lists the known names
    assert check_modality("AUDIO") == "audio" == binder.Modality.AUDIO
    with pytest.raises(BinderInputError, match="not a modality name"):
        check_modality("au dio!")
    model = BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}})
    with pytest.raises(BinderInputError, match="smell"):
        model.embed(smell=["x.wav"], progress=False)
    with pytest.raises(BinderInputError, match="depth"):  # a modality this model does not embed
        model.embed(depth=[np.zeros((8, 8))], progress=False)
    with pytest.raises(BinderInputError, match="inputs"):
        model.embed(progress=False)
    with pytest.raises(BinderInputError, match="audio"):
        model.embed(audio=[], progress=False)


# ----------------------------------------------------------------------------------------------
# Audio: preprocessing matches ImageBind (imagebind/data.py: waveform2melspec + Normalize)
# ----------------------------------------------------------------------------------------------

IB_MEAN, IB_STD, IB_FRAMES, IB_RATE = -4.268, 9.138, 204, 16000


def imagebind_melspec(wave: torch.Tensor) -> torch.Tensor:
    """ImageBind's waveform2melspec on a 16 kHz mono clip, then its Normalize -> (1, 128, 204)."""
    wave = wave - wave.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        wave[None], htk_compat=True, sample_frequency=IB_RATE, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10,
    ).T  # (128, frames)
    p = IB_FRAMES - fbank.shape[1]
    fbank = torch.nn.ZeroPad2d((0, p, 0, 0))(fbank) if p > 0 else fbank[:, :IB_FRAMES]
    return ((fbank - IB_MEAN) / IB_STD)[None]


def test_fbank_matches_imagebind_for_a_sine(audio_pre):
    wave = sine(440, 1.0, IB_RATE)  # 1 s < one 2 s clip: every clip is the whole wave, padded
    x = audio_pre((wave, IB_RATE))
    expected = imagebind_melspec(torch.from_numpy(wave))
    assert expected.shape == (1, 128, 204)
    for k in range(3):
        torch.testing.assert_close(x[k], expected, atol=1e-4, rtol=1e-4)
    # Padding: frames after the 98 real ones hold the normalised zero.
    torch.testing.assert_close(x[0, 0, :, 150], torch.full((128,), (0 - IB_MEAN) / IB_STD))
    # The peak bin of a 440 Hz tone is the mel bin around 440 Hz, not an artefact.
    centre = x[0, 0, :, 50]
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731 (HTK mel)
    bin_440 = (mel(440) - mel(20)) / ((mel(8000) - mel(20)) / 129) - 1
    assert abs(int(centre.argmax()) - bin_440) <= 1.5


def test_clips_spread_over_the_recording(audio_pre):
    """A 5 s recording, clip_policy spread: 3 clips of 2 s starting at 0, 1.5 and 3 s."""
    wave = torch.from_numpy(chirp(5.0, IB_RATE))
    x = audio_pre((wave.numpy(), IB_RATE))
    for k, start in enumerate((0.0, 1.5, 3.0)):
        a = int(start * IB_RATE)
        torch.testing.assert_close(x[k], imagebind_melspec(wave[a : a + 2 * IB_RATE]), atol=1e-4, rtol=1e-4)


def test_resampled_input_matches_imagebind(audio_pre):
    wave8k = chirp(1.0, 8000)
    x = audio_pre((wave8k, 8000))
    wave16k = torchaudio.functional.resample(torch.from_numpy(wave8k), 8000, IB_RATE)
    torch.testing.assert_close(x[0], imagebind_melspec(wave16k), atol=1e-4, rtol=1e-4)
