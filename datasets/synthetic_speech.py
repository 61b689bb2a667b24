"""Synthetic spoken digits: many text-to-speech voices as extra training speakers.

Four recorded speakers are few to learn a speaker-independent digit from; keyword-spotting work
trains on synthesised speech from many voices for that reason (Lin et al., "Training
keyword spotters with limited and synthesized speech data", ICASSP 2020). Two engines speak the
ten digit words:

* eSpeak NG (``data.synthetic_speakers``; formant synthesis, shipped as a wheel by
  ``espeakng-loader``, no download at run time): each speaker is one English accent x one voice
  variant x a speaking rate, pitch and pitch range drawn from a seeded generator (within
  ``data.espeak_prosody``).
* CMU Flite (``data.synthetic_flite_speakers``; the ``flite`` program, e.g. ``apt install
  flite``): its voices are built from recordings of real people (diphones, or statistical
  parametric models of the CMU ARCTIC speakers), so they sound closer to a person than eSpeak's;
  each speaker is one of ``data.flite_voices`` (the built-in ones, ``.flitevox`` files, or
  festvox.org voices downloaded into binder's cache) x a duration stretch, target pitch and
  pitch deviation (within ``data.flite_prosody``).

Each take re-draws a small jitter of rate and pitch. Clips are written as FSDD-like 8 kHz WAV
files (``{digit}_synth{NN}_{take}.wav``, ``{digit}_flite{NN}_{take}.wav``) into binder's cache,
keyed by the settings and the engine's version, once, atomically. They only ever join a training
split. eSpeak keeps a little state (pitch flutter, filter memory) from one utterance to the
next, so making the clips again reproduces them closely (same voices, lengths and levels,
waveform correlation about 0.99), not bit for bit; being cached, every run on a machine trains
on the very same clips.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np

from binder.errors import BinderConfigError

log = logging.getLogger(__name__)

ACCENTS = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
SAMPLE_RATE = 8000  # the FSDD recordings' rate: synthetic clips share their bandwidth
FORMAT = 1  # bump when the clips' recipe changes (part of the cache key)
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER ids
_SYNCHRONOUS, _POS_CHARACTER = 2, 1
_LOCK = threading.Lock()
# The ranges a speaker's prosody is drawn from, uniformly and once per speaker ({name: [low, high]};
# data.espeak_prosody, data.flite_prosody), and the bounds a configured range must keep within.
ESPEAK_PROSODY = {"rate": [120, 260], "pitch": [15, 90], "range": [20, 90]}  # words/minute, 0-100, 0-100
ESPEAK_BOUNDS = {"rate": (80, 450), "pitch": (0, 100), "range": (0, 100)}
FLITE_PROSODY = {"stretch": [0.8, 1.35], "f0": [80.0, 250.0], "f0_std": [5.0, 35.0]}  # duration x, Hz, Hz
FLITE_BOUNDS = {"stretch": (0.2, 5.0), "f0": (40.0, 500.0), "f0_std": (0.0, 200.0)}


def check_prosody(key: str, ranges: Mapping[str, Sequence[float]],
                  bounds: Mapping[str, Tuple[float, float]]) -> Dict[str, List[float]]:
    """``ranges`` as a plain ``{name: [low, high]}`` dict, once it names exactly ``bounds``' parameters
    and each range is ordered and lies within its bounds (``key``: the config key, for errors)."""
    unknown, missing = sorted(set(ranges) - set(bounds)), sorted(set(bounds) - set(ranges))
    if unknown or missing:
        raise BinderConfigError(f"{key} sets {sorted(bounds)}, each [low, high]; unknown: {unknown}, "
                                f"missing: {missing}")
    checked = {}
    for name, (lowest, highest) in bounds.items():
        try:
            pair = [float(v) for v in ranges[name]]
        except (TypeError, ValueError):  # not a sequence of numbers
            pair = []
        if len(pair) != 2 or not lowest <= pair[0] <= pair[1] <= highest:
            raise BinderConfigError(f"{key}.{name} must be [low, high] with {lowest} <= low <= high <= {highest}, "
                                    f"got {list(ranges[name])}")
        checked[name] = pair
    return checked


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an eSpeak voice name (``accent+variant``) and its prosody."""

    name: str
    rate: int  # words per minute (eSpeak's default: 175)
    pitch: int  # 0-100 (default 50)
    range: int  # pitch range 0-100 (default 50)


class SpeechEngine(Protocol):
    """What a synthesiser gives :func:`synthetic_digits`: its voices, takes and clips."""

    name: str  # for logs
    prefix: str  # speaker-name prefix of its clips (``{digit}_{prefix}{NN}_{take}.wav``)

    def spec(self) -> Dict[str, Any]: ...  # what identifies its clips (the cache key; voices.json)

    def draw(self, count: int, seed: int) -> List[Any]: ...  # ``count`` distinct speakers

    def jitter(self, voice: Any, rng: random.Random) -> Any: ...  # one take's voice

    def speak(self, text: str, voice: Any) -> Tuple[np.ndarray, int]: ...  # (waveform, sample rate)


class _Espeak:
    """The eSpeak NG library through ctypes (one per process; the library holds global state); the
    engine of the synthetic voices is :class:`Espeak`."""

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


class Espeak:
    """eSpeak NG's speakers, their prosody drawn within ``prosody`` (the engine of ``data.synthetic_speakers``)."""

    name, prefix = "eSpeak NG", "synth"

    def __init__(self, prosody: Optional[Mapping[str, Sequence[float]]] = None) -> None:
        self.prosody = check_prosody("data.espeak_prosody", ESPEAK_PROSODY if prosody is None else prosody,
                                     ESPEAK_BOUNDS)
        self.library = engine()

    def spec(self) -> Dict[str, Any]:
        """What identifies this engine's clips (part of the cache key; written to voices.json)."""
        return {"espeak": self.library.version, "accents": ACCENTS, "prosody": self.prosody}

    @staticmethod
    def jitter(voice: Voice, rng: random.Random) -> Voice:
        """One take's voice: rate and pitch re-drawn a little around the speaker's (kept within eSpeak's bounds)."""
        (slowest, fastest), (lowest, highest) = ESPEAK_BOUNDS["rate"], ESPEAK_BOUNDS["pitch"]
        return Voice(voice.name, min(max(voice.rate + rng.randint(-20, 20), slowest), fastest),
                     min(max(voice.pitch + rng.randint(-5, 5), lowest), highest), voice.range)

    def draw(self, count: int, seed: int) -> List[Voice]:
        """``count`` distinct speakers (see :func:`draw_voices`)."""
        return draw_voices(count, seed, self.library.variants(), self.prosody)

    def speak(self, text: str, voice: Voice) -> Tuple[np.ndarray, int]:
        """Synthesise ``text`` in ``voice`` -> (float32 waveform, its sample rate)."""
        return self.library.say(text, voice), self.library.rate


def draw_voices(count: int, seed: int, variants: List[str],
                prosody: Mapping[str, Sequence[float]] = ESPEAK_PROSODY) -> List[Voice]:
    """``count`` distinct speakers: accent x variant pairs without repeats, prosody drawn per speaker
    within ``prosody``'s ranges (``{"rate": [low, high], "pitch": ..., "range": ...}``)."""
    rng = random.Random(seed)
    pairs = [(a, v) for a in ACCENTS for v in variants]
    if count > len(pairs):
        raise BinderConfigError(f"data.synthetic_speakers must be <= {len(pairs)} (accents x voice variants), "
                                f"got {count}")
    chosen = rng.sample(pairs, count)
    draw = {name: (round(low), round(high)) for name, (low, high) in prosody.items()}
    return [Voice(f"{a}+{v}", rate=rng.randint(*draw["rate"]), pitch=rng.randint(*draw["pitch"]),
                  range=rng.randint(*draw["range"])) for a, v in chosen]


# --------------------------------------------------------------------------- CMU Flite
FESTVOX_VOICES = "http://www.festvox.org/flite/packed/flite-2.0/voices/{name}.flitevox"
LIMITED_DOMAIN = {"awb_time"}  # built-in voices that only speak clock times


@dataclass(frozen=True)
class FliteVoice:
    """One Flite speaker: a voice (built-in name or ``.flitevox`` path) and its prosody."""

    name: str
    stretch: float  # duration stretch (1.0: the voice's own speed; higher is slower)
    f0: float  # target mean pitch, Hz
    f0_std: float  # target pitch deviation, Hz


def voice_digest(path: "str | Path") -> str:
    """The first 16 hex digits of a voice file's sha256, read once per version of the file in a process."""
    stat = Path(path).stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    from binder.files import file_digest

    return file_digest(path)[:16]


class Flite:
    """CMU Flite through its ``flite`` program, with the voices it can speak in."""

    name, prefix = "Flite", "flite"

    def __init__(self, voices: Sequence[str] = (), cache: Optional[Path] = None,
                 prosody: Optional[Mapping[str, Sequence[float]]] = None) -> None:
        import shutil

        self.prosody = check_prosody("data.flite_prosody", FLITE_PROSODY if prosody is None else prosody,
                                     FLITE_BOUNDS)
        exe = shutil.which("flite")
        if exe is None:
            raise BinderConfigError("data.synthetic_flite_speakers needs CMU Flite's `flite` program on PATH "
                                    "(Debian/Ubuntu: apt install flite; macOS: brew install flite)")
        self.exe = exe
        about = self._run("--version", check=False)  # flite --version exits 1
        self.version = next((line.split(":", 1)[1].strip() for line in about.splitlines() if "version:" in line),
                            about.strip()[-80:])
        listed = self._run("-lv").split(":", 1)[-1].split()
        self.builtin = [v for v in listed if v not in LIMITED_DOMAIN]
        self.voices = [self._resolve(v, cache) for v in voices] or list(self.builtin)
        if not self.voices:
            raise BinderConfigError(f"{exe} lists no voices; set data.flite_voices to .flitevox files")

    def _run(self, *args: str, check: bool = True) -> str:
        import subprocess

        done = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=120)
        if check and (done.returncode != 0 or "Error load voice" in done.stderr + done.stdout):
            # a voice that fails to load makes flite fall back to its default voice, exit status 0
            raise BinderConfigError(f"{self.exe} {' '.join(args)} failed: {(done.stderr + done.stdout).strip()[-300:]}")
        return done.stdout

    def _resolve(self, voice: str, cache: Optional[Path]) -> str:
        """A built-in name as is; a ``.flitevox`` path made absolute; a festvox.org voice downloaded."""
        from binder.download import cache_dir, download

        if voice in self.builtin:
            return voice
        path = Path(voice).expanduser()
        if path.suffix == ".flitevox":
            if not path.is_file():
                raise BinderConfigError(f"data.flite_voices: {voice!r} is not a file")
            return self._probe(path.resolve())
        if voice.startswith("cmu_") and voice.isidentifier():
            dest = cache_dir(cache) / "flite-voices" / f"{voice}.flitevox"
            return self._probe(download(FESTVOX_VOICES.format(name=voice), dest))
        raise BinderConfigError(f"data.flite_voices: {voice!r} is neither a built-in voice of {self.exe} "
                                f"({self.builtin}), a .flitevox file, nor a festvox.org voice (cmu_us_...)")

    def _probe(self, path: Path) -> str:
        """``path`` once flite has loaded it (a broken voice file is an error, not flite's default voice)."""
        try:
            self._run("-voice", str(path), "-t", "one", "-o", "none")
        except BinderConfigError as err:
            raise BinderConfigError(f"data.flite_voices: {str(path)!r} is not a Flite voice ({err})") from None
        return str(path)

    def spec(self) -> Dict[str, Any]:
        """What identifies this engine's clips (part of the cache key; written to voices.json)."""
        voices = [v if v in self.builtin else f"{Path(v).name}@{voice_digest(v)}" for v in self.voices]
        return {"flite": self.version, "flite_voices": voices, "prosody": self.prosody}

    def draw(self, count: int, seed: int) -> List[FliteVoice]:
        """``count`` speakers: the voices in turn, each with its own speed and pitch (within ``self.prosody``)."""
        rng = random.Random(seed)
        ranges = self.prosody
        return [FliteVoice(self.voices[i % len(self.voices)], stretch=round(rng.uniform(*ranges["stretch"]), 3),
                           f0=round(rng.uniform(*ranges["f0"]), 1), f0_std=round(rng.uniform(*ranges["f0_std"]), 1))
                for i in range(count)]

    @staticmethod
    def jitter(voice: FliteVoice, rng: random.Random) -> FliteVoice:
        """One take's voice: speed and pitch re-drawn a little around the speaker's."""
        return FliteVoice(voice.name, voice.stretch * rng.uniform(0.95, 1.05), voice.f0 * rng.uniform(0.95, 1.05),
                          voice.f0_std)

    def speak(self, text: str, voice: FliteVoice) -> Tuple[np.ndarray, int]:
        """Synthesise ``text`` in ``voice`` -> (float32 waveform, its sample rate)."""
        import tempfile

        import soundfile as sf

        with tempfile.TemporaryDirectory(prefix="binder-flite-") as tmp:
            out = Path(tmp) / "say.wav"
            self._run("-voice", voice.name, "--setf", f"duration_stretch={voice.stretch:.3f}",
                      "--setf", f"int_f0_target_mean={voice.f0:.1f}", "--setf", f"int_f0_target_stddev={voice.f0_std:.1f}",
                      "-t", text, "-o", str(out))
            wave, rate = sf.read(out, dtype="float32")
        if wave.ndim != 1 or not wave.size:
            raise BinderConfigError(f"Flite produced no audio for {text!r} in voice {voice.name!r}")
        return wave, int(rate)


def _clip(wave: np.ndarray, rate: int, rng: random.Random) -> np.ndarray:
    """Resample to 8 kHz, trim the silence a synthesiser leaves around a word, set a random peak level."""
    import librosa

    wave = librosa.resample(wave, orig_sr=rate, target_sr=SAMPLE_RATE)
    wave, _ = librosa.effects.trim(wave, top_db=35)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if not np.isfinite(peak) or peak == 0.0:
        raise BinderConfigError("the synthesiser produced a silent clip")
    return (wave * (rng.uniform(0.3, 0.9) / peak)).astype(np.float32)


def _key(speakers: int, takes: int, seed: int, engine_spec: Dict[str, Any], words: List[str]) -> str:
    spec = {"speakers": speakers, "takes": takes, "seed": seed, "words": words, "format": FORMAT,
            "rate": SAMPLE_RATE, **engine_spec}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _write(folder: Path, tts: SpeechEngine, voices: List[Any], takes: int, seed: int, words: List[str]) -> None:
    import soundfile as sf

    from binder.logs import progress

    for s, voice in enumerate(progress(voices, desc=f"synthesising digit voices ({tts.name})")):
        rng = random.Random(seed * 100003 + s)
        for take in range(takes):
            jittered = tts.jitter(voice, rng)
            for digit, word in enumerate(words):
                wave, rate = tts.speak(word, jittered)
                sf.write(folder / f"{digit}_{tts.prefix}{s:02d}_{take}.wav", _clip(wave, rate, rng), SAMPLE_RATE,
                         subtype="PCM_16")
    voices_json = [asdict(v) for v in voices]
    (folder / "voices.json").write_text(json.dumps({**tts.spec(), "voices": voices_json}, indent=1))


def synthetic_digits(speakers: int, takes: int, seed: int, words: List[str], cache: Optional[Path] = None,
                     tts: Optional[SpeechEngine] = None) -> Path:
    """The folder of ``speakers`` x ``takes`` x ``len(words)`` clips of ``tts`` (default: eSpeak NG's defaults),
    made once and cached."""
    from binder.download import cache_dir
    from binder.files import atomic_folder

    if speakers < 1 or takes < 1:
        raise BinderConfigError(f"synthetic speakers and data.synthetic_takes must be >= 1, got {speakers}, {takes}")
    tts = tts or Espeak()
    folder = cache_dir(cache) / "synthetic-digits" / _key(speakers, takes, seed, tts.spec(), words)
    if (folder / "voices.json").is_file():
        return folder
    voices = tts.draw(speakers, seed)
    log.info("synthesising %d %s speakers x %d takes of %d digits into %s", speakers, tts.name, takes,
             len(words), folder)
    with atomic_folder(folder) as tmp:
        _write(tmp, tts, voices, takes, seed, words)
    return folder


def speaker_count() -> Tuple[int, int]:
    """(accents, voice variants) available: their product bounds ``data.synthetic_speakers``."""
    return len(ACCENTS), len(engine().variants())
