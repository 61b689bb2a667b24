"""Synthetic spoken digits: many text-to-speech voices as extra training speakers.

Four recorded speakers are few to learn a speaker-independent digit from; keyword-spotting work
trains on synthesised speech from many voices for that reason (Lin et al., "Training
keyword spotters with limited and synthesized speech data", ICASSP 2020). binder synthesises
the ten digit words with eSpeak NG (formant synthesis, shipped as a wheel by
``espeakng-loader``, no download at run time): each synthetic speaker is one English accent x one
voice variant x a speaking rate, pitch and pitch range drawn from a seeded generator, and each
take re-draws a small jitter of rate and pitch. Clips are written as FSDD-like 8 kHz WAV files
(``{digit}_synth{NN}_{take}.wav``) into binder's cache, keyed by the settings and the eSpeak
version, once, atomically. They only ever join a training split (``data.synthetic_speakers``).
eSpeak keeps a little state (pitch flutter, filter memory) from one utterance to the next, so
making the clips again reproduces them closely (same voices, lengths and
levels, waveform correlation about 0.99), not bit for bit; being cached, every run on a machine
trains on the very same clips.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from binder.errors import BinderConfigError

log = logging.getLogger(__name__)

ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
SAMPLE_RATE = 8000  # the FSDD recordings' rate: synthetic clips share their bandwidth
FORMAT = 1  # bump when the clips' recipe changes (part of the cache key)
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER ids
_SYNCHRONOUS, _POS_CHARACTER = 2, 1
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an eSpeak voice name (``accent+variant``) and its prosody."""

    name: str
    rate: int  # words per minute (eSpeak's default: 175)
    pitch: int  # 0-100 (default 50)
    range: int  # pitch range 0-100 (default 50)


class _Espeak:
    """The eSpeak NG library through ctypes (one per process; the library holds global state)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as err:
            raise BinderConfigError("data.synthetic_speakers needs eSpeak NG's voices: "
                                    "pip install 'binder-embed[speech]' (espeakng-loader)") from err
        self.data = Path(espeakng_loader.get_data_path())
        lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
        self.rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, str(self.data).encode(), 0)
        if self.rate <= 0:
            raise BinderConfigError(f"eSpeak NG failed to start with its data at {self.data}")
        lib.espeak_Info.restype = ctypes.c_char_p
        self.version = lib.espeak_Info(None).decode()
        self._chunks: List[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback(self._collect)  # kept alive as long as the library may call it
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, wav: "ctypes._Pointer", n: int, events: int) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def variants(self) -> List[str]:
        """The voice variants eSpeak NG ships (``voices/!v``), sorted."""
        return sorted(p.name for p in (self.data / "voices" / "!v").iterdir() if p.is_file())

    def say(self, text: str, voice: Voice) -> np.ndarray:
        """Synthesise ``text`` in ``voice`` -> float32 waveform at ``self.rate`` Hz."""
        with _LOCK:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise BinderConfigError(f"eSpeak NG has no voice {voice.name!r}")
            for param, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.range)):
                self.lib.espeak_SetParameter(param, value, 0)
            self._chunks = []
            data = text.encode()
            self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise BinderConfigError(f"eSpeak NG produced no audio for {text!r} in voice {voice.name!r}")
        return np.concatenate(chunks).astype(np.float32) / 32768.0


_ENGINE: Optional[_Espeak] = None


def engine() -> _Espeak:
    """The process's eSpeak NG (started on first use)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def draw_voices(count: int, seed: int, variants: List[str]) -> List[Voice]:
    """``count`` distinct speakers: accent x variant pairs without repeats, prosody drawn per speaker."""
    rng = random.Random(seed)
    pairs = [(a, v) for a in ACCENTS for v in variants]
    if count > len(pairs):
        raise BinderConfigError(f"data.synthetic_speakers must be <= {len(pairs)} (accents x voice variants), "
                                f"got {count}")
    chosen = rng.sample(pairs, count)
    return [Voice(f"{a}+{v}", rate=rng.randint(120, 260), pitch=rng.randint(15, 90), range=rng.randint(20, 90))
            for a, v in chosen]


def _clip(wave: np.ndarray, rate: int, rng: random.Random) -> np.ndarray:
    """Resample to 8 kHz, trim the silence eSpeak leaves around a word, set a random peak level."""
    import librosa

    wave = librosa.resample(wave, orig_sr=rate, target_sr=SAMPLE_RATE)
    wave, _ = librosa.effects.trim(wave, top_db=35)
    peak = float(np.abs(wave).max())
    if not np.isfinite(peak) or peak == 0.0:
        raise BinderConfigError("eSpeak NG produced a silent clip")
    return (wave * (rng.uniform(0.3, 0.9) / peak)).astype(np.float32)


def _key(speakers: int, takes: int, seed: int, version: str, words: List[str]) -> str:
    spec = {"speakers": speakers, "takes": takes, "seed": seed, "espeak": version, "words": words,
            "accents": ACCENTS, "format": FORMAT, "rate": SAMPLE_RATE}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _write(folder: Path, voices: List[Voice], takes: int, seed: int, words: List[str]) -> None:
    import soundfile as sf

    from binder.logs import progress

    tts = engine()
    for s, voice in enumerate(progress(voices, desc="synthesising digit voices")):
        rng = random.Random(seed * 100003 + s)
        for take in range(takes):
            jitter = Voice(voice.name, voice.rate + rng.randint(-20, 20), voice.pitch + rng.randint(-5, 5), voice.range)
            for digit, word in enumerate(words):
                wave = _clip(tts.say(word, jitter), tts.rate, rng)
                sf.write(folder / f"{digit}_synth{s:02d}_{take}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
    voices_json = [asdict(v) for v in voices]
    (folder / "voices.json").write_text(json.dumps({"espeak": tts.version, "voices": voices_json}, indent=1))


def synthetic_digits(speakers: int, takes: int, seed: int, words: List[str],
                     cache: Optional[Path] = None) -> Path:
    """The folder of ``speakers`` x ``takes`` x ``len(words)`` synthetic clips (made once, cached)."""
    from binder.download import cache_dir
    from binder.files import atomic_folder

    if speakers < 1 or takes < 1:
        raise BinderConfigError(f"data.synthetic_speakers and data.synthetic_takes must be >= 1, got {speakers}, {takes}")
    tts = engine()
    folder = cache_dir(cache) / "synthetic-digits" / _key(speakers, takes, seed, tts.version, words)
    if (folder / "voices.json").is_file():
        return folder
    voices = draw_voices(speakers, seed, tts.variants())
    log.info("synthesising %d speakers x %d takes of %d digits into %s", speakers, takes, len(words), folder)
    with atomic_folder(folder) as tmp:
        _write(tmp, voices, takes, seed, words)
    return folder


def speaker_count() -> Tuple[int, int]:
    """(accents, voice variants) available: their product bounds ``data.synthetic_speakers``."""
    return len(ACCENTS), len(engine().variants())
