"""Audio modality: ImageBind-compatible preprocessing and a ViT over log-mel patches.

Preprocessing follows ImageBind's ``imagebind/data.py`` (arXiv 2305.05665, appendix C): 16 kHz,
several 2 s clips over the recording, per clip a Kaldi-style 128-bin log-mel filterbank (25 ms
Hanning window, 10 ms hop, HTK-compatible, no dither, no energy, the clip's mean removed),
right-padded or cropped to 204 frames and normalised with mean -4.268, std 9.138. Two settings
are explicit and saved with every model:

* ``clip_policy``: ``imagebind`` places and cuts clips exactly as ImageBind (pytorchvideo's
  constant clips sampler, ``int(start * rate) : int(end * rate)``, the mean removed in place, as
  the reference does); ``spread`` covers the recording from its start to its end;
* ``channels``: ``first`` is ImageBind's (the clip's mean over all channels removed, then the
  filterbank of channel 0); ``mix`` averages the channels first, which is the better input for
  encoders binder trains.

The ``imagebind`` preset defaults to ``imagebind`` + ``first`` (so ``binder.load("imagebind_huge")``
reproduces the reference on real recordings), the ``tiny`` preset to ``spread`` + ``mix``. The
encoder is ImageBind's audio trunk (Conv2d stem kernel 16, stride 10 on 128 x 204, 768 wide, 12
deep, 12 heads, drop path 0.1, a learned key/value token) or a tiny preset.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional

import numpy as np
import soundfile as sf
import torch
import torchaudio

from binder.clips import POLICIES, imagebind_ranges, sample_starts
from binder.errors import BinderConfigError, BinderInputError, check_rate, existing_file
from binder.fbank import frame_sizes, log_mel, resample
from binder.layers import EncoderOverrides, Trunk, TrunkConfig, trunk_config
from binder.modality import ModalityConfig
from binder.registry import ModalitySpec, register_modality

log = logging.getLogger(__name__)

PRESETS: Dict[str, TrunkConfig] = {
    # Trains in minutes on 2 CPU cores: frame-strip patches (all 128 mel bins x 4 frames -> 51
    # tokens). On the digits world square 16 x 16 patches sat at chance for hundreds of steps
    # while strips reached 98% supervised accuracy in 5 epochs (see benchmarks/README.md).
    "tiny": TrunkConfig(patch=(128, 4), stride=(128, 4), width=128, depth=4, heads=4, drop_path=0.1),
    # ImageBind's audio trunk (imagebind_huge): 12 x 19 overlapping patches, stem LayerNorm,
    # a learned key/value token in every attention, embeddings scaled by 20 after normalisation.
    "imagebind": TrunkConfig(patch=(16, 16), stride=(10, 10), width=768, depth=12, heads=12, drop_path=0.1,
                             patch_norm=True, bias_kv=True, logit_scale=20.0),
}


CHANNELS = ("mix", "first")
BINDER_INPUT = ("spread", "mix")  # binder's own models: clips from start to end, channels averaged
IMAGEBIND_INPUT = ("imagebind", "first")  # imagebind/data.py exactly (the imagebind preset's default)


@dataclass
class AudioAugmentConfig:
    """Train-time augmentation on normalised log-mel clips (applied to the valid frames)."""

    time_stretch: float = 0.1  # stretch the valid frames by a factor in [1 - s, 1 + s]
    max_shift: int = 20  # delay the content by up to this many frames
    gain_db: float = 6.0  # random gain in [-g, g] dB on the valid frames
    freq_masks: int = 2  # SpecAugment frequency masks
    freq_width: int = 12  # max mel bins per frequency mask
    time_masks: int = 2  # SpecAugment time masks
    time_width: int = 12  # max frames per time mask


@dataclass
class AudioConfig(ModalityConfig):
    """Audio preprocessing + encoder settings (the schema of ``modality=audio``)."""

    modality: ClassVar[str] = "audio"
    presets: ClassVar[Mapping[str, TrunkConfig]] = PRESETS

    preset: str = "tiny"  # encoder size preset: tiny (minutes on 2 CPU cores) | imagebind (768 wide, 12 deep)
    encoder: EncoderOverrides = field(default_factory=EncoderOverrides)  # overrides of the preset's trunk
    sample_rate: int = 16000  # every input is resampled to this rate
    num_mel_bins: int = 128  # log-mel bins
    target_length: int = 204  # frames per clip (2 s at a 10 ms hop, ImageBind's 204)
    frame_length_ms: float = 25.0  # analysis window
    frame_shift_ms: float = 10.0  # hop
    clip_duration: float = 2.0  # seconds per clip
    clips_per_sample: int = 3  # clips per recording at inference; embeddings are averaged
    clip_policy: Optional[str] = None  # spread: clips from start to end | imagebind: ImageBind's sampler; None: the preset's
    channels: Optional[str] = None  # mix: average the channels | first: ImageBind's (channel 0 after the clip mean); None: the preset's
    mean: float = -4.268  # normalisation mean (ImageBind, AudioSet statistics)
    std: float = 9.138  # normalisation std
    temperature: float = 0.05  # fixed InfoNCE temperature (ImageBind audio)
    augment: AudioAugmentConfig = field(default_factory=AudioAugmentConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        policy, channels = IMAGEBIND_INPUT if self.preset == "imagebind" else BINDER_INPUT
        self.clip_policy = policy if self.clip_policy is None else self.clip_policy
        self.channels = channels if self.channels is None else self.channels
        if self.clip_policy not in POLICIES or self.channels not in CHANNELS:
            raise BinderConfigError(f"audio clip_policy must be one of {POLICIES} and channels one of {CHANNELS}, got "
                                    f"{self.clip_policy!r}, {self.channels!r}")

    def trunk(self) -> TrunkConfig:
        """The preset's trunk with the ``encoder`` overrides, on (1, mel bins, frames) inputs."""
        return trunk_config(PRESETS[self.preset], self.encoder, 1, (self.num_mel_bins, self.target_length), "audio")

    @property
    def pad_value(self) -> float:
        """Value of a padded (all-zero log-mel) frame after normalisation."""
        return (0.0 - self.mean) / self.std


def _to_float_array(x: Any, name: str) -> np.ndarray:
    """Tensor/array of samples -> float32 numpy (C, T), with integer PCM scaled to [-1, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise BinderInputError(f"{name}: expected a file path, numpy array or tensor, got {type(x).__name__}")
    if x.dtype.kind == "i":
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    elif x.dtype.kind == "u":
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    elif x.dtype.kind != "f":
        raise BinderInputError(f"{name}: expected float or integer PCM samples, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] > 16:
        raise BinderInputError(
            f"{name}: expected samples shaped (T,) or (channels, T) with at most 16 channels, "
            f"got shape {tuple(x.shape)}"
        )
    return x.astype(np.float32, copy=False)


PCM = {"PCM_16": ("int16", 2.0 ** -15), "PCM_24": ("int32", 2.0 ** -31)}
"""Integer WAV/FLAC subtypes read as integers and scaled exactly as libsndfile scales them to
float (a power of two), an eighth of the time its float conversion takes."""


class AudioPreprocessor:
    """Raw audio (file path, array or tensor + sample rate) -> clips (K, 1, mel, frames)."""

    def __init__(self, cfg: AudioConfig) -> None:
        self.cfg = cfg

    def read(self, path: "str | Path") -> tuple:
        """Read an audio file with soundfile -> (float32 samples (C, T), contiguous, and the sample
        rate); a file whose
        header promises more audio than it holds (a truncated download) is read as far as it
        goes, with a warning naming it."""
        path = existing_file(path, "audio", "an audio file")
        try:
            with sf.SoundFile(str(path)) as f:
                extra, sr, pcm = f.extra_info, f.samplerate, PCM.get(f.subtype)
                if pcm is not None:  # integer PCM: read as integers, scaled here (libsndfile's float values)
                    raw = f.read(dtype=pcm[0], always_2d=True)  # (T, C)
                    data = np.empty(raw.shape[::-1], dtype=np.float32)
                    np.multiply(raw.T, np.float32(pcm[1]), out=data)
                else:
                    data = np.ascontiguousarray(f.read(dtype="float32", always_2d=True).T)
        except Exception as err:
            raise BinderInputError(f"audio file {str(path)!r} is not readable audio: {err}") from err
        short = re.search(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)", extra or "")
        if short and int(short.group(2)) < int(short.group(1)):
            log.warning("audio file %r is truncated: its header declares %s bytes of audio, the file holds %s; "
                        "using the %.2f s that are there", str(path), short.group(1), short.group(2),
                        data.shape[1] / sr)
        return data, int(sr)

    def waveform(self, item: Any, sample_rate: Optional[int] = None) -> torch.Tensor:
        """Any accepted input -> validated waveform (C, T) at ``cfg.sample_rate``: one averaged
        channel (``channels: mix``) or every channel (``first``, resampled one by one as ImageBind)."""
        if isinstance(item, (str, Path)):
            name = f"audio file {str(item)!r}"
            data, sample_rate = self.read(item)
        else:
            if isinstance(item, tuple) and len(item) == 2:
                item, sample_rate = item
            name = "audio input"
            data = _to_float_array(item, name)
            if sample_rate is None:
                raise BinderInputError(f"{name}: a waveform needs its sample rate (pass (samples, rate))")
        rate = int(check_rate(sample_rate, name, whole=True))
        if data.shape[-1] == 0:
            raise BinderInputError(f"{name} is empty: expected at least one sample")
        if not np.isfinite(data).all():
            raise BinderInputError(f"{name} contains NaN or infinite samples")
        wave = torch.from_numpy(np.ascontiguousarray(data))  # (C, T)
        if self.cfg.channels == "mix":
            wave = wave.mean(0, keepdim=True)  # (1, T)
        if rate != self.cfg.sample_rate:
            wave = resample(wave, rate, self.cfg.sample_rate)
        return wave

    def fbank(self, segment: torch.Tensor, center: bool = True) -> torch.Tensor:
        """Clip (C, T) or (T,) -> normalised log-mel (1, mel, frames) of its first channel, after
        removing the clip's mean over all channels (``center``), padded/cropped to target_length."""
        segment = segment if segment.ndim == 2 else segment[None]  # (C, T)
        if center:
            segment = segment - segment.mean()
        return self.features(segment[0][None])[0]

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips (K, T) of one length -> normalised log-mel (K, 1, mel, frames): Kaldi filterbanks
        computed for all clips at once (:func:`binder.fbank.log_mel`), each right-padded with
        silence or cropped to ``target_length`` frames. Clips shorter than one window are padded
        with zeros to one window first."""
        cfg = self.cfg
        window, _, _ = frame_sizes(cfg.sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
        if clips.shape[-1] < window:
            clips = torch.nn.functional.pad(clips, (0, window - clips.shape[-1]))
        mel = log_mel(clips, cfg.sample_rate, cfg.num_mel_bins, cfg.frame_length_ms, cfg.frame_shift_ms)
        mel = mel.transpose(1, 2)  # (K, mel, frames)
        pad = cfg.target_length - mel.shape[-1]
        mel = torch.nn.functional.pad(mel, (0, pad)) if pad > 0 else mel[..., : cfg.target_length]
        return ((mel - cfg.mean) / cfg.std)[:, None]  # (K, 1, mel, frames)

    def ranges(self, num_samples: int, num_clips: int, train: bool) -> list:
        """Sample ranges [a, b) of the clips (see :mod:`binder.clips`)."""
        if self.cfg.clip_policy == "imagebind" and not train:
            return imagebind_ranges(num_samples, self.cfg.sample_rate, self.cfg.clip_duration, num_clips)
        clip = int(round(self.cfg.clip_duration * self.cfg.sample_rate))
        return [(s, s + clip) for s in sample_starts(num_samples, clip, num_clips, self.cfg.clip_policy, train)]

    def clips(self, wave: torch.Tensor, ranges: list) -> "tuple[list, list]":
        """The first channel of each clip after its mean (over all channels) is removed -> (the
        distinct clips, each (T',), and which of them each range is).

        ``imagebind`` removes each clip's mean in place on the whole recording, as
        ``imagebind/data.py`` does, so a clip overlapping an earlier one sees the earlier
        subtraction too. A range equal to the one before it differs from it only by a constant
        (its own mean, near zero), which every frame's mean removal takes out: it is computed once."""
        if self.cfg.clip_policy == "imagebind":
            buffer, cut = wave.clone(), []
            for a, b in ranges:
                view = buffer[:, a:b]
                view -= view.mean()
                cut.append(view[0].clone())  # as it is now: a later clip's subtraction must not reach it
        else:
            cut = [wave[0, a:b] - wave[:, a:b].mean() for a, b in ranges]
        distinct, which = [], []
        for i, (rng, clip) in enumerate(zip(ranges, cut)):
            if not (i and rng == ranges[i - 1]):
                distinct.append(clip)
            which.append(len(distinct) - 1)
        return distinct, which

    def __call__(
        self, item: Any, sample_rate: Optional[int] = None, train: bool = False,
        num_clips: Optional[int] = None,
    ) -> torch.Tensor:
        """Preprocess one recording -> (K, 1, mel, frames) with K = ``num_clips`` clips."""
        wave = self.waveform(item, sample_rate)  # (C, T)
        k = num_clips or (1 if train else self.cfg.clips_per_sample)
        distinct, which = self.clips(wave, self.ranges(wave.shape[-1], k, train))
        if len({c.shape[-1] for c in distinct}) == 1:
            feats = self.features(torch.stack(distinct))  # (U, 1, mel, frames)
        else:  # clips cut short by the end of the recording
            feats = torch.cat([self.features(c[None]) for c in distinct])
        clips = feats[which]  # (K, 1, mel, frames)
        if not torch.isfinite(clips).all():  # e.g. samples of 1e30: the power spectrum overflows
            peak = float(wave.abs().max())
            raise BinderInputError(f"{self._name(item)}: samples too large to analyse (largest magnitude {peak:.3g}); "
                                   "expected float PCM around [-1, 1] or integer PCM")
        return clips

    @staticmethod
    def _name(item: Any) -> str:
        return f"audio file {str(item)!r}" if isinstance(item, (str, Path)) else "audio input"


class AudioAugment:
    """Feature-domain augmentation of one normalised clip (1, mel, frames).

    Only the valid (non-padded) frames are stretched, shifted and gain-changed; padded frames
    keep the padding value, so augmented clips look like real preprocessed ones.
    """

    def __init__(self, cfg: AudioConfig) -> None:
        self.cfg, self.aug, self.pad = cfg, cfg.augment, cfg.pad_value
        self.freq_mask = torchaudio.transforms.FrequencyMasking(cfg.augment.freq_width)
        self.time_mask = torchaudio.transforms.TimeMasking(cfg.augment.time_width)

    def _valid_frames(self, x: torch.Tensor) -> int:
        is_pad = (x[0] - self.pad).abs().amax(0) < 1e-6  # (frames,)
        idx = torch.nonzero(~is_pad)
        return int(idx[-1].item()) + 1 if idx.numel() else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, frames = self.aug, x.shape[-1]
        n = self._valid_frames(x)
        if n == 0:
            return x
        content = x[..., :n]  # (1, mel, n)
        if a.time_stretch > 0:
            scale = 1 + (torch.rand(()).item() * 2 - 1) * a.time_stretch
            m = max(1, min(frames, int(round(n * scale))))
            content = torch.nn.functional.interpolate(content, size=m, mode="linear", align_corners=False)
        if a.gain_db > 0:  # log-mel of power: +g dB = + g/10 * ln(10) nats, then normalised
            gain = (torch.rand(()).item() * 2 - 1) * a.gain_db * math.log(10) / 10 / self.cfg.std
            content = content + gain
        shift = int(torch.randint(0, a.max_shift + 1, ()).item()) if a.max_shift > 0 else 0
        shift = min(shift, frames - content.shape[-1])
        out = torch.full_like(x, self.pad)
        out[..., shift : shift + content.shape[-1]] = content[..., : frames - shift]
        return self._spec_augment(out)

    def _spec_augment(self, x: torch.Tensor) -> torch.Tensor:
        """SpecAugment (Park et al., 2019): frequency and time masks set to 0 (the normalised mean)."""
        for _ in range(self.aug.freq_masks):
            x = self.freq_mask(x)
        for _ in range(self.aug.time_masks):
            x = self.time_mask(x)
        return x


class AudioEncoder(Trunk):
    """Transformer over (N, 1, mel, frames) log-mel clips (ImageBind's audio trunk, resizable)."""

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__(cfg.trunk())


SILENCE = 1e-4  # a query whose peak amplitude is below this (-80 dBFS) holds no sound


def check_query(item: Any) -> None:
    """Refuse a silent query: it embeds, but to a direction that says nothing about any sound.
    What cannot be read is left to the preprocessor, which names the problem."""
    if isinstance(item, (str, Path)):
        try:
            data, _ = sf.read(str(item), dtype="float32", always_2d=True)
        except Exception:  # soundfile's own error types: the preprocessor reports the file
            return
        name = f"audio file {str(item)!r}"
    else:
        try:
            data = _to_float_array(item[0] if isinstance(item, tuple) and len(item) == 2 else item, "audio input")
        except BinderInputError:
            return
        name = "audio input"
    if data.size and np.isfinite(data).all() and float(np.abs(data).max()) < SILENCE:
        raise BinderInputError(f"{name} is silent (its peak is below -80 dBFS): a query needs a recording with sound")


def example_input() -> tuple:
    """Five seconds of a 16 kHz chirp with a little noise: ``(samples, rate)``."""
    t = np.arange(5 * 16000) / 16000
    wave = 0.4 * np.sin(2 * np.pi * (200 * t + 280 * t ** 2)) + np.random.default_rng(0).normal(0, 0.01, t.shape)
    return wave.astype(np.float32), 16000


SPEC = register_modality(ModalitySpec(
    name="audio", config_cls=AudioConfig, preprocessor_cls=AudioPreprocessor, encoder_cls=AudioEncoder,
    augment_cls=AudioAugment, example_input=example_input,
    extensions=(".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"), check_query=check_query,
))
