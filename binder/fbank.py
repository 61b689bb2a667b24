"""Kaldi-compatible log-mel filterbanks for many clips at once, and resampling with cached kernels.

ImageBind (arXiv 2305.05665, ``imagebind/data.py``) turns each 2 s clip into a Kaldi ``fbank``
(``torchaudio.compliance.kaldi.fbank``: frames of 25 ms every 10 ms, each frame's mean removed,
pre-emphasis 0.97, a window, a power spectrum zero-padded to a power of two, triangular mel
filters from 20 Hz to Nyquist, the log floored at float epsilon). That function computes one clip
at a time and rebuilds its window and its mel filters on every call, and the signal's log energy
even when it is not used; :func:`log_mel` computes the same features for a stack of clips in one
pass with the filters and window made once per setting (the loader's path, on the CPU).
:func:`resample` is torchaudio's windowed-sinc resampler with its kernel made once per pair of
rates.

For features computed on the accelerator (``speed.audio_features=device``), :func:`fbank` takes
a ``(B, T)`` batch of clips of different valid lengths in one pass of batched tensor operations,
and :func:`resample_batch` brings clips of several rates to the model's (grouped by rate). A
clip shorter than the batch carries its valid length: its frames are those of the clip alone, as
Kaldi's would be, and frames past its end are zero (what the per-clip path pads with).

Both give the same numbers as torchaudio up to float rounding (the audio tests compare them
with ImageBind's own loader).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

PREEMPHASIS = 0.97  # Kaldi's default pre-emphasis coefficient
LOW_FREQ = 20.0  # Kaldi's lowest mel filter edge (Hz)
FILTERS_PER_GROUP = 16  # mel filters computed by one matrix product


def frame_sizes(sample_rate: int, frame_length_ms: float, frame_shift_ms: float) -> Tuple[int, int, int]:
    """(window, shift, padded FFT size) in samples, as Kaldi rounds them."""
    window = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    return window, shift, 1 << (window - 1).bit_length()


def mel_banks(num_bins: int, fft_size: int, sample_rate: float, device: torch.device) -> torch.Tensor:
    """(num_bins, fft_size // 2 + 1) HTK mel triangles from 20 Hz to Nyquist, Kaldi's exactly."""
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(num_bins, fft_size, float(sample_rate), LOW_FREQ, 0.0, 100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1)).to(device)  # the Nyquist bin gets no weight, as in Kaldi


@functools.lru_cache(maxsize=16)
def _filters(sample_rate: int, window: int, padded: int, num_mel_bins: int, window_type: str) -> Tuple[torch.Tensor,
                                                                                                        tuple]:
    """(window function (window,), mel filters in bands: per group of filters (first, last + 1,
    first bin, last bin + 1, their weights (bins, filters))) for float32 input."""
    if window_type == "hanning":
        win = torch.hann_window(window, periodic=False)
    elif window_type == "povey":
        win = torch.hann_window(window, periodic=False).pow(0.85)
    else:
        raise ValueError(f"window_type must be 'hanning' or 'povey', got {window_type!r}")
    banks = mel_banks(num_mel_bins, padded, sample_rate, torch.device("cpu")).T.float()  # (padded // 2 + 1, mel)
    bands = []  # each group of filters covers a few neighbouring bins: multiply those only
    for m0 in range(0, banks.shape[1], FILTERS_PER_GROUP):
        m1 = min(m0 + FILTERS_PER_GROUP, banks.shape[1])
        rows = torch.nonzero((banks[:, m0:m1] != 0).any(1)).flatten()
        b0, b1 = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 1)
        bands.append((m0, m1, b0, b1, banks[b0:b1, m0:m1].contiguous()))
    return win, tuple(bands)


def log_mel(clips: torch.Tensor, sample_rate: int, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
            frame_shift_ms: float = 10.0, window_type: str = "hanning") -> torch.Tensor:
    """Float32 clips (B, T) of equal length -> Kaldi log-mel filterbanks (B, frames, mel).

    The same as ``torchaudio.compliance.kaldi.fbank(clip[None], htk_compat=True, use_energy=False,
    dither=0.0, window_type=..., num_mel_bins=..., sample_frequency=...)`` for each clip (snipped
    edges: ``1 + (T - window) // shift`` frames; T must hold at least one window)."""
    window, shift, padded = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if clips.shape[-1] < window:
        raise ValueError(f"clips of {clips.shape[-1]} samples are shorter than one {window}-sample window")
    win, bands = _filters(int(sample_rate), window, padded, int(num_mel_bins), window_type)
    x = clips.float()  # (B, T)
    strided = x.unfold(-1, window, shift)  # (B, frames, window), a view
    frames = torch.zeros(*strided.shape[:2], padded, dtype=torch.float32)  # (B, frames, padded): zero-padded
    body = frames[..., :window]
    body.copy_(strided)
    body.sub_(body.mean(-1, keepdim=True))  # each frame's DC offset, then pre-emphasis as Kaldi orders it:
    previous = body[..., :-1] * PREEMPHASIS  # y[j] = f[j] - 0.97 f[j - 1], y[0] = f[0] - 0.97 f[0]
    body[..., 1:] -= previous
    body[..., 0] *= 1.0 - PREEMPHASIS
    body.mul_(win)
    spectrum = torch.view_as_real(torch.fft.rfft(frames))  # (B, frames, padded // 2 + 1, 2)
    power = spectrum[..., 0].square() + spectrum[..., 1].square()  # |X|^2 (a quarter of abs().pow(2)'s time)
    mel = torch.empty(*power.shape[:2], num_mel_bins, dtype=torch.float32)
    for m0, m1, b0, b1, weights in bands:
        mel[..., m0:m1] = torch.matmul(power[..., b0:b1], weights)
    return mel.clamp_min_(torch.finfo(torch.float32).eps).log_()


PHASES_PER_GROUP = 16  # output phases computed by one matrix product in the banded resampler


@functools.lru_cache(maxsize=32)
def _kernel(orig: int, new: int) -> Tuple[torch.Tensor, int, int, tuple]:
    """torchaudio's windowed-sinc kernel (sinc_interp_hann, 6 zero crossings, rolloff 0.99) for
    ``orig -> new`` Hz -> (kernel (new', 1, taps), width, gcd, bands). Each output phase reads only
    the ~35 input samples under its window; ``bands`` holds, per group of phases, (first phase,
    last phase + 1, first tap, last tap + 1, their taps (tap span, phases)), so a rate ratio like
    441 / 160 (44.1 -> 16 kHz) multiplies a tenth of the kernel, not all of it."""
    from torchaudio.functional.functional import _get_sinc_resample_kernel

    gcd = math.gcd(orig, new)
    kernel, width = _get_sinc_resample_kernel(orig, new, gcd, 6, 0.99, "sinc_interp_hann", None,
                                              torch.device("cpu"), torch.float32)
    taps = kernel[:, 0]  # (phases, taps)
    live = taps.abs() > 1e-9 * float(taps.abs().max())
    bands = []
    for p0 in range(0, taps.shape[0], PHASES_PER_GROUP):
        p1 = min(p0 + PHASES_PER_GROUP, taps.shape[0])
        cols = torch.nonzero(live[p0:p1].any(0)).flatten()
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        bands.append((p0, p1, c0, c1, taps[p0:p1, c0:c1].T.contiguous()))
    banded = sum((c1 - c0) * (p1 - p0) for p0, p1, c0, c1, _ in bands) < 0.5 * taps.numel()
    return kernel, width, gcd, tuple(bands) if banded else ()


def resample(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """``torchaudio.functional.resample(wave (C, T), orig, new)`` (float32, default settings): the
    same kernel, made once per pair of rates, and only its non-zero band multiplied."""
    if orig == new:
        return wave
    try:
        from torchaudio.functional.functional import _apply_sinc_resample_kernel

        kernel, width, gcd, bands = _kernel(int(orig), int(new))
    except (ImportError, TypeError):  # another torchaudio: its public function
        import torchaudio

        return torchaudio.functional.resample(wave, orig, new)
    if not bands:
        return _apply_sinc_resample_kernel(wave, int(orig), int(new), gcd, kernel, width)
    o, n = int(orig) // gcd, int(new) // gcd
    length = wave.shape[-1]
    padded = F.pad(wave.float(), (width, width + o))  # (C, T + 2 width + o), as torchaudio pads
    blocks = padded.unfold(-1, kernel.shape[-1], o)  # (C, B, taps): block b starts at input b * o
    out = torch.empty(*blocks.shape[:2], n, dtype=torch.float32)  # (C, B, phases)
    for p0, p1, c0, c1, taps in bands:
        out[..., p0:p1] = torch.matmul(blocks[..., c0:c1], taps)
    return out.reshape(wave.shape[0], -1)[:, : math.ceil(n * length / o)]


# ----------------------------------------------------------------------------------------------
# A batch of clips of different lengths and rates, on any device
# ----------------------------------------------------------------------------------------------

def frame_count(length: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """Kaldi's frame count with ``snip_edges``: 1 + (n - window) // shift (at least 1: shorter clips
    are zero-padded to one window first)."""
    return torch.clamp((length - window) // shift + 1, min=1)


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
    window, shift, fft_size = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
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


def resample_batch(waves: torch.Tensor, lengths: torch.Tensor, rates: Sequence[int], target: int) -> tuple:
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
            x = torchaudio.functional.resample(x, rate, target)  # on the clips' device
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
