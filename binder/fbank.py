"""Kaldi-compatible log-mel filterbanks of a whole batch at once, on any device.

ImageBind's audio input (arXiv 2305.05665; its ``imagebind/data.py``) is Kaldi's ``fbank`` of
each 2 s clip: 25 ms Hann ("hanning") windows every 10 ms, DC offset removed per frame,
pre-emphasis 0.97, the power spectrum of a 512-point FFT, 128 HTK mel bins from 20 Hz, natural
log floored at machine epsilon (``torchaudio.compliance.kaldi.fbank`` with ``htk_compat``, no
dither, no energy). ``torchaudio`` computes it one waveform at a time, which is what a loader
worker does per clip. :func:`fbank` computes the same numbers for ``(B, T)`` clips in one pass of
batched tensor operations, so a GPU can turn a batch of raw waveforms into features in well under
a millisecond instead of the loader spending ~1.5 ms of CPU per clip; :func:`resample` brings
clips of any rate to the model's first (grouped by rate, ``torchaudio``'s windowed-sinc filter).
Clips shorter than the batch carry their valid length: their frames are those of the clip alone,
as Kaldi's would be, and frames past the end are zero (what the per-clip path pads with).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

PREEMPHASIS = 0.97
LOW_FREQ = 20.0


def frame_count(length: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """Kaldi's frame count with ``snip_edges``: 1 + (n - window) // shift (at least 1: shorter clips
    are zero-padded to one window first)."""
    return torch.clamp((length - window) // shift + 1, min=1)


def mel_banks(num_bins: int, fft_size: int, sample_rate: float, device: torch.device) -> torch.Tensor:
    """(num_bins, fft_size // 2 + 1) HTK mel triangles from 20 Hz to Nyquist, Kaldi's exactly."""
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(num_bins, fft_size, float(sample_rate), LOW_FREQ, 0.0, 100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1)).to(device)  # the Nyquist bin gets no weight, as in Kaldi


def fbank(waves: torch.Tensor, lengths: torch.Tensor, sample_rate: int, num_mel_bins: int = 128,
          frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0) -> torch.Tensor:
    """Log-mel energies of a batch of mono clips.

    Args:
        waves: (B, T) float samples; samples at or past a clip's length are ignored.
        lengths: (B,) valid samples per clip (>= 1).
        sample_rate, num_mel_bins, frame_length_ms, frame_shift_ms: As Kaldi's ``fbank``.

    Returns:
        (B, num_mel_bins, F) with F the frame count of the longest clip; a shorter clip's frames
        past its own count are 0.
    """
    window = int(sample_rate * frame_length_ms / 1000)
    shift = int(sample_rate * frame_shift_ms / 1000)
    fft_size = 1 << (window - 1).bit_length()
    waves = waves.float()
    if waves.shape[1] < window:
        waves = F.pad(waves, (0, window - waves.shape[1]))
    valid = torch.arange(waves.shape[1], device=waves.device)[None] < lengths[:, None]  # (B, T)
    waves = waves * valid
    frames = waves.unfold(1, window, shift)  # (B, F, window)
    frames = frames - frames.mean(-1, keepdim=True)  # DC offset per frame
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate-padded shift
    frames = frames - PREEMPHASIS * previous
    frames = frames * torch.hann_window(window, periodic=False, device=waves.device, dtype=frames.dtype)
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2)  # (B, F, fft_size // 2 + 1)
    mel = power @ mel_banks(num_mel_bins, fft_size, sample_rate, waves.device).T  # (B, F, mel)
    mel = mel.clamp_min(torch.finfo(mel.dtype).eps).log()
    count = frame_count(lengths, window, shift)  # (B,)
    keep = torch.arange(mel.shape[1], device=mel.device)[None] < count[:, None]  # (B, F)
    return (mel * keep[..., None]).transpose(1, 2)  # (B, mel, F)


def resample(waves: torch.Tensor, lengths: torch.Tensor, rates: Sequence[int], target: int) -> tuple:
    """(B, T) clips at per-clip ``rates`` -> ((B, T') clips at ``target``, (B,) lengths), each rate's
    clips resampled together."""
    import torchaudio

    rates = [int(r) for r in rates]
    groups = {}
    for i, r in enumerate(rates):
        groups.setdefault(r, []).append(i)
    parts, new_lengths, size = {}, torch.zeros_like(lengths), 0
    for rate, idx in groups.items():
        index = torch.tensor(idx, device=waves.device)
        longest = int(lengths[index].max())
        x = waves[index, :longest]
        if rate != target:
            x = torchaudio.functional.resample(x, rate, target)
        parts[rate] = (index, x)
        new_lengths[index] = torch.ceil(lengths[index].double() * target / rate).long().clamp(max=x.shape[1])
        size = max(size, x.shape[1])
    out = waves.new_zeros(waves.shape[0], size)
    for index, x in parts.values():
        out[index, : x.shape[1]] = x
    return out, new_lengths


def centred(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each clip minus the mean of its valid samples (ImageBind removes each clip's mean)."""
    valid = torch.arange(waves.shape[1], device=waves.device)[None] < lengths[:, None]
    mean = (waves * valid).sum(1, keepdim=True) / lengths[:, None].clamp_min(1)
    return (waves - mean) * valid


def fit_frames(mel: torch.Tensor, target_length: int) -> torch.Tensor:
    """(B, mel, F) -> (B, mel, target_length): zero-padded or cropped at the end."""
    pad = target_length - mel.shape[-1]
    return F.pad(mel, (0, pad)) if pad > 0 else mel[..., :target_length]


def seconds_to_samples(seconds: float, rate: int) -> int:
    """Samples in ``seconds`` at ``rate`` (rounded)."""
    return int(math.floor(seconds * rate + 0.5))
