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
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

import numpy as np
import soundfile as sf
import torch
import torchaudio
from einops import rearrange

from binder.clips import POLICIES, imagebind_ranges, sample_starts
from binder.errors import BinderConfigError, BinderInputError, check_rate, existing_file
from binder.fbank import frame_sizes, log_mel, resample, seconds_to_samples
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
NORMALIZE = ("global", "utterance")
BINDER_INPUT = ("spread", "mix")  # binder's own models: clips from start to end, channels averaged
IMAGEBIND_INPUT = ("imagebind", "first")  # imagebind/data.py exactly (the imagebind preset's default)


@dataclass
class AudioAugmentConfig:
    """Train-time augmentation (``modality.audio.augment.*``), every switch off at 0.

    Waveform switches (speed, pitch, noise, room) make ``variants`` augmented copies of each
    training recording, preprocessed once when the data is set up (data that reads files on every
    step, manifests, augments every read instead); feature switches act on every read of a
    normalised log-mel clip (only its valid frames are stretched, shifted and gain-changed).
    """

    variants: int = 0  # waveform-augmented copies of each training recording (0: no waveform augmentation)
    speed: float = 0.0  # speed perturbation: resample by a factor in [1 - s, 1 + s] (tempo and pitch; Ko et al. 2015)
    pitch: float = 0.0  # pitch shift by up to this many semitones, duration kept (torchaudio's pitch_shift)
    noise_prob: float = 0.0  # probability of additive noise (white, pink or brown) ...
    snr_db: Tuple[float, float] = (5.0, 30.0)  # ... at a signal-to-noise ratio drawn from this range (dB)
    room_prob: float = 0.0  # probability of a simulated room response (exponentially decaying noise) ...
    rt60: Tuple[float, float] = (0.1, 0.6)  # ... with a reverberation time drawn from this range (s)
    vtlp: float = 0.0  # vocal-tract-length perturbation: warp factor in [1 - v, 1 + v] (Jaitly & Hinton 2013)
    eq_db: float = 0.0  # random equaliser: a smooth gain curve over the mel bins within [-g, g] dB (microphones)
    time_stretch: float = 0.1  # stretch the valid frames by a factor in [1 - s, 1 + s]
    max_shift: int = 20  # delay the content by up to this many frames
    gain_db: float = 6.0  # random gain in [-g, g] dB on the valid frames
    freq_masks: int = 2  # SpecAugment frequency masks (torchaudio.transforms.FrequencyMasking)
    freq_width: int = 12  # max mel bins per frequency mask
    time_masks: int = 2  # SpecAugment time masks (torchaudio.transforms.TimeMasking)
    time_width: int = 12  # max frames per time mask

    def __post_init__(self) -> None:
        for key in ("speed", "vtlp", "time_stretch"):
            if not 0 <= getattr(self, key) < 0.5:
                raise BinderConfigError(f"audio augment.{key} must be in [0, 0.5), got {getattr(self, key)!r}")
        for key in ("noise_prob", "room_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise BinderConfigError(f"audio augment.{key} must be a probability in [0, 1], got "
                                        f"{getattr(self, key)!r}")
        for key in ("snr_db", "rt60"):
            low, high = (float(v) for v in getattr(self, key))
            if not low <= high or (key == "rt60" and not 0 < low):
                raise BinderConfigError(f"audio augment.{key} must be a range [low, high] with low <= high"
                                        f"{' and low > 0' if key == 'rt60' else ''}, got {list(getattr(self, key))}")
            setattr(self, key, (low, high))
        negative = [k for k in ("variants", "pitch", "eq_db", "max_shift", "gain_db", "freq_masks", "freq_width",
                                "time_masks", "time_width") if getattr(self, k) < 0]
        if negative:
            raise BinderConfigError(f"audio augment.{negative[0]} must be >= 0, got {getattr(self, negative[0])!r}")

    @property
    def on_waveform(self) -> bool:
        """Whether any waveform augmentation is switched on."""
        return bool(self.speed or self.pitch or self.noise_prob or self.room_prob)


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
    clip_policy: Optional[str] = None  # spread: start to end | imagebind: ImageBind's sampler; None: the preset's
    channels: Optional[str] = None  # mix: average the channels | first: channel 0 after the clip mean; None: preset's
    mean: float = -4.268  # normalisation mean (ImageBind, AudioSet statistics)
    std: float = 9.138  # normalisation std
    # global: (x - mean) / std | utterance: each clip's per-bin mean over its own frames is first set
    # to `mean` (cepstral mean normalisation: less of the microphone and the speaker's timbre)
    normalize: str = "global"
    temperature: float = 0.05  # fixed InfoNCE temperature (ImageBind audio)
    augment: AudioAugmentConfig = field(default_factory=AudioAugmentConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        policy, channels = IMAGEBIND_INPUT if self.preset == "imagebind" else BINDER_INPUT
        self.clip_policy = policy if self.clip_policy is None else self.clip_policy
        self.channels = channels if self.channels is None else self.channels
        if self.normalize not in NORMALIZE:
            raise BinderConfigError(f"audio normalize must be one of {NORMALIZE}, got {self.normalize!r}")
        if self.clip_policy not in POLICIES or self.channels not in CHANNELS:
            raise BinderConfigError(f"audio clip_policy must be one of {POLICIES} and channels one of {CHANNELS}, got "
                                    f"{self.clip_policy!r}, {self.channels!r}")
        positive = ("sample_rate", "num_mel_bins", "target_length", "frame_length_ms", "frame_shift_ms",
                    "clip_duration", "clips_per_sample", "std")
        bad = [k for k in positive
               if not (isinstance(getattr(self, k), (int, float)) and 0 < getattr(self, k) < math.inf)]
        if bad:
            raise BinderConfigError(f"audio {', '.join(bad)}: expected positive finite numbers, "
                                    f"got {[getattr(self, k) for k in bad]}")
        if not (isinstance(self.mean, (int, float)) and math.isfinite(self.mean)):
            raise BinderConfigError(f"audio mean: expected a finite number, got {self.mean!r}")

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
        wave, rate = self.source(item, sample_rate)
        if rate != self.cfg.sample_rate:
            wave = resample(wave, rate, self.cfg.sample_rate)
        return wave

    def source(self, item: Any, sample_rate: Optional[int] = None) -> Tuple[torch.Tensor, int]:
        """Any accepted input -> (validated waveform (C, T) at its own rate, the rate)."""
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
        return wave, rate

    def raw(self, item: Any, sample_rate: Optional[int] = None, train: bool = False,
            num_clips: Optional[int] = None) -> Dict[str, Any]:
        """The clips of one recording at its own rate, for :meth:`features` on the accelerator
        (``speed.audio_features=device``): ``wave`` (K, T) channel-0 samples of each clip, zero-padded
        to one clip at that rate, ``rate``, ``length`` (K,) valid samples. The clips are those
        :meth:`__call__` takes (the same ranges, mapped to the input's rate)."""
        wave, rate = self.source(item, sample_rate)
        target = self.cfg.sample_rate
        k = num_clips or (1 if train else self.cfg.clips_per_sample)
        clip = seconds_to_samples(self.cfg.clip_duration, rate)
        out, lengths = torch.zeros(k, clip), torch.zeros(k, dtype=torch.long)
        for j, (a, _) in enumerate(self.ranges(math.ceil(wave.shape[-1] * target / rate), k, train)):
            start = int(a * rate // target)
            segment = wave[0, start : start + clip]
            out[j, : segment.numel()], lengths[j] = segment, max(1, segment.numel())
        return {"wave": out, "rate": rate, "length": lengths}

    def features(self, raw: Dict[str, torch.Tensor]) -> torch.Tensor:
        """A collated batch of :meth:`raw` outputs (``wave`` (B, K, T), ``rate`` (B,), ``length``
        (B, K)) -> normalised log-mel clips (B, K, 1, mel, frames), computed batched on the batch's
        device (:mod:`binder.fbank`); equal to :meth:`__call__`'s up to resampling at clip edges."""
        from binder import fbank

        cfg = self.cfg
        b, k, _ = raw["wave"].shape
        waves = rearrange(raw["wave"], "b k t -> (b k) t")
        lengths = rearrange(raw["length"], "b k -> (b k)")
        rates = [int(r) for r in raw["rate"].repeat_interleave(k).tolist()]
        waves, lengths = fbank.resample_batch(waves, lengths, rates, cfg.sample_rate)
        mel = fbank.fbank(fbank.centred(waves, lengths), lengths, cfg.sample_rate, cfg.num_mel_bins,
                          cfg.frame_length_ms, cfg.frame_shift_ms)  # (B K, mel, F)
        if cfg.normalize == "utterance":  # as log_mel: each clip's per-bin mean over its own frames
            window, shift, _ = frame_sizes(cfg.sample_rate, cfg.frame_length_ms, cfg.frame_shift_ms)
            count = fbank.frame_count(lengths, window, shift)  # (B K,)
            keep = (torch.arange(mel.shape[-1], device=mel.device)[None] < count[:, None])[:, None]  # (B K, 1, F)
            mean = (mel * keep).sum(-1, keepdim=True) / count[:, None, None]
            mel = (mel - mean + cfg.mean) * keep
        mel = (fbank.fit_frames(mel, cfg.target_length) - cfg.mean) / cfg.std
        return rearrange(mel, "(b k) m f -> b k 1 m f", b=b)

    def fbank(self, segment: torch.Tensor, center: bool = True) -> torch.Tensor:
        """Clip (C, T) or (T,) -> normalised log-mel (1, mel, frames) of its first channel, after
        removing the clip's mean over all channels (``center``), padded/cropped to target_length."""
        segment = segment if segment.ndim == 2 else segment[None]  # (C, T)
        if center:
            segment = segment - segment.mean()
        return self.log_mel(segment[0][None])[0]

    def log_mel(self, clips: torch.Tensor) -> torch.Tensor:
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
        if cfg.normalize == "utterance":
            mel = mel - mel.mean(-1, keepdim=True) + cfg.mean  # every frame is the clip's own
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
            feats = self.log_mel(torch.stack(distinct))  # (U, 1, mel, frames)
        else:  # clips cut short by the end of the recording
            feats = torch.cat([self.log_mel(c[None]) for c in distinct])
        clips = feats[which]  # (K, 1, mel, frames)
        if not torch.isfinite(clips).all():  # e.g. samples of 1e30: the power spectrum overflows
            peak = float(wave.abs().max())
            raise BinderInputError(f"{self._name(item)}: samples too large to analyse (largest magnitude {peak:.3g}); "
                                   "expected float PCM around [-1, 1] or integer PCM")
        return clips

    @staticmethod
    def _name(item: Any) -> str:
        return f"audio file {str(item)!r}" if isinstance(item, (str, Path)) else "audio input"


def _mel(f: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(f / 700.0)  # Kaldi's (HTK) mel scale


def colored_noise(shape: Tuple[int, ...], exponent: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Noise whose power falls as 1 / f ** exponent (0 white, 1 pink, 2 brown), unit RMS."""
    white = torch.randn(shape, generator=generator)
    spectrum = torch.fft.rfft(white)
    f = torch.arange(spectrum.shape[-1], dtype=torch.float32).clamp(min=1.0)
    noise = torch.fft.irfft(spectrum / f ** (exponent / 2), n=shape[-1])
    return noise / noise.pow(2).mean().sqrt().clamp(min=1e-12)


def room_response(rt60: float, rate: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A simulated room impulse response: the direct path, then Gaussian noise decaying by 60 dB
    over ``rt60`` seconds (the statistical late-reverberation model), unit energy."""
    n = max(2, int(min(rt60, 1.0) * rate))
    t = torch.arange(n, dtype=torch.float32) / rate
    tail = torch.randn(n, generator=generator) * torch.exp(-math.log(1000.0) * t / rt60)
    tail[0] = 0.0
    h = tail * 0.5 / tail.pow(2).sum().sqrt().clamp(min=1e-12)
    h[0] = 1.0
    return h / h.pow(2).sum().sqrt()


class AudioAugment:
    """Train-time augmentation: waveform variants (:meth:`raw`) and per-read feature changes.

    :meth:`raw` perturbs a recording's waveform (speed, pitch, simulated room, additive noise,
    with torchaudio) before the preprocessor turns it into a clip; ``__call__`` changes one
    normalised clip (1, mel, frames): vocal-tract-length warping of its frequency axis, time
    stretch, gain and delay of its valid frames (padded frames keep the padding value, so augmented
    clips look like real preprocessed ones), then SpecAugment (torchaudio's masking transforms).
    """

    def __init__(self, cfg: AudioConfig) -> None:
        self.cfg, self.aug, self.pad = cfg, cfg.augment, cfg.pad_value
        self.freq_mask = torchaudio.transforms.FrequencyMasking(cfg.augment.freq_width)
        self.time_mask = torchaudio.transforms.TimeMasking(cfg.augment.time_width)
        nyquist = cfg.sample_rate / 2
        low, high = _mel(np.array(20.0)), _mel(np.array(nyquist))  # Kaldi fbank's default band
        self.centres = 700.0 * np.expm1((low + (high - low) * np.arange(1, cfg.num_mel_bins + 1)
                                         / (cfg.num_mel_bins + 1)) / 1127.0)  # (mel,) Hz
        self.mel_low, self.mel_step, self.nyquist = float(low), float((high - low) / (cfg.num_mel_bins + 1)), nyquist
        self._warps: Dict[float, tuple] = {}

    # ----- waveform variants ---------------------------------------------------------------

    @property
    def variants(self) -> int:
        """How many waveform-augmented copies of each training recording to make (0: none)."""
        return self.aug.variants if self.aug.on_waveform else 0

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(()))

    def perturb(self, wave: torch.Tensor, rate: int) -> "tuple[torch.Tensor, float]":
        """One random perturbation of a waveform (C, T) at ``rate`` -> (waveform, the factor by
        which its duration must be stretched back after analysis: pitch shifts keep duration)."""
        a, restore = self.aug, 1.0
        if a.speed:  # played faster by f: shorter and higher
            f = round(self._uniform(1 - a.speed, 1 + a.speed), 2)
            wave = torchaudio.functional.resample(wave, int(round(f * 100)), 100)
        if a.pitch:  # resampled by r (higher by log2(r) octaves), its duration restored after analysis
            r = round(2.0 ** (self._uniform(-a.pitch, a.pitch) / 12), 2)
            wave = torchaudio.functional.resample(wave, int(round(r * 100)), 100)
            restore = r
        if a.room_prob and self._uniform(0, 1) < a.room_prob:
            h = room_response(self._uniform(*a.rt60), rate)
            peak = wave.abs().max().clamp(min=1e-9)
            wave = torchaudio.functional.fftconvolve(wave, h.expand(wave.shape[0], -1))
            wave = wave * peak / wave.abs().max().clamp(min=1e-9)
        if a.noise_prob and self._uniform(0, 1) < a.noise_prob:
            noise = colored_noise(tuple(wave.shape), float(torch.randint(0, 3, ())))
            snr = torch.full(wave.shape[:-1], self._uniform(*a.snr_db))
            wave = torchaudio.functional.add_noise(wave, noise, snr)
        return wave, restore

    def raw(self, item: Any, preprocessor: "AudioPreprocessor", count: Optional[int] = None) -> torch.Tensor:
        """``count`` (default ``variants``) waveform-augmented clips of one raw recording ->
        (count, 1, mel, frames), each also stretched back after a pitch shift."""
        wave, rate = preprocessor.waveform(item), self.cfg.sample_rate
        clips = []
        for _ in range(self.variants if count is None else count):
            perturbed, restore = self.perturb(wave, rate)
            clip = preprocessor(perturbed, sample_rate=rate, num_clips=1)[0]  # (1, mel, frames)
            clips.append(self._stretch_valid(clip, restore) if restore != 1.0 else clip)
        return torch.stack(clips) if clips else torch.zeros(0, 1, self.cfg.num_mel_bins, self.cfg.target_length)

    # ----- per-read feature changes --------------------------------------------------------

    def _valid_frames(self, x: torch.Tensor) -> int:
        is_pad = (x[0] - self.pad).abs().amax(0) < 1e-6  # (frames,)
        idx = torch.nonzero(~is_pad)
        return int(idx[-1].item()) + 1 if idx.numel() else 0

    def _stretch_valid(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        """The valid frames of (1, mel, frames) stretched to ``factor`` times their length."""
        n, frames = self._valid_frames(x), x.shape[-1]
        if n == 0:
            return x
        m = max(1, min(frames, int(round(n * factor))))
        out = torch.full_like(x, self.pad)
        out[..., :m] = torch.nn.functional.interpolate(x[..., :n], size=m, mode="linear", align_corners=False)
        return out

    def vtlp(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """Warp the frequency axis of (1, mel, frames) by ``alpha`` (Jaitly & Hinton's piecewise-
        linear VTLP: f -> alpha f up to a boundary, then linear to the Nyquist frequency)."""
        key = round(alpha, 3)  # warps are cached per 0.001 of alpha
        if key not in self._warps:
            f, nyq = self.centres, self.nyquist
            bound = 0.8 * nyq * min(key, 1.0) / key
            warped = np.where(f <= bound, key * f, nyq - (nyq - key * bound) / (nyq - bound) * (nyq - f))
            source = np.interp(f, warped, f)  # the frequency each output bin reads from
            pos = np.clip((_mel(source) - self.mel_low) / self.mel_step - 1, 0, len(f) - 1)
            lo = np.floor(pos).astype(np.int64)
            self._warps[key] = (torch.from_numpy(lo), torch.from_numpy(np.minimum(lo + 1, len(f) - 1)),
                                torch.from_numpy(pos - lo).float()[:, None])  # (mel,), (mel,), (mel, 1)
        lo, hi, w = self._warps[key]
        return x[:, lo] * (1 - w) + x[:, hi] * w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a, frames = self.aug, x.shape[-1]
        if a.vtlp > 0:
            x = self.vtlp(x, self._uniform(1 - a.vtlp, 1 + a.vtlp))
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
        if a.eq_db > 0:  # a gain per mel bin, linear between 5 random points: (mel, 1)
            points = (torch.rand(1, 1, 5) * 2 - 1) * a.eq_db * math.log(10) / 10 / self.cfg.std
            curve = torch.nn.functional.interpolate(points, size=x.shape[-2], mode="linear", align_corners=True)
            content = content + curve[0, 0][:, None]
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
