"""Synthetic digit voices (eSpeak NG, CMU Flite): reproducible, cached once, training split only, clear errors.

The Flite tests need the ``flite`` program (Debian: apt-get install flite); they skip without it,
unless ``BINDER_REQUIRE_FLITE=1`` (CI installs it and sets that), when they fail."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from binder.datasets import synthetic_speech as synth
from binder.datasets.digits import CLASSNAMES, DigitsConfig, DigitsWorld
from binder.errors import BinderConfigError


def test_clips_are_fsdd_like_and_reproducible(tmp_path):
    a = synth.synthetic_digits(2, 2, seed=3, words=CLASSNAMES, cache=tmp_path / "a")
    b = synth.synthetic_digits(2, 2, seed=3, words=CLASSNAMES, cache=tmp_path / "b")
    names = sorted(p.name for p in a.glob("*.wav"))
    assert len(names) == 2 * 2 * 10 and names[0] == "0_synth00_0.wav"
    for name in names:
        wave, rate = sf.read(a / name)
        assert rate == 8000 and 0.1 < len(wave) / rate < 2.0
        assert np.isfinite(wave).all() and 0.25 < np.abs(wave).max() < 0.95
        again, _ = sf.read(b / name)  # eSpeak keeps a little state between utterances: near-identical, not bitwise
        assert len(again) == len(wave) and np.corrcoef(wave, again)[0, 1] > 0.95
    assert (a / "voices.json").read_text() == (b / "voices.json").read_text()
    other = synth.synthetic_digits(2, 2, seed=4, words=CLASSNAMES, cache=tmp_path / "a")
    assert other != a and (a / "0_synth00_0.wav").read_bytes() != (other / "0_synth00_0.wav").read_bytes()


def test_made_once_then_reused(tmp_path, monkeypatch):
    folder = synth.synthetic_digits(1, 1, seed=0, words=CLASSNAMES, cache=tmp_path)
    stamp = (folder / "voices.json").stat().st_mtime_ns
    monkeypatch.setattr(synth, "_write", lambda *a, **k: pytest.fail("synthesised again"))
    assert synth.synthetic_digits(1, 1, seed=0, words=CLASSNAMES, cache=tmp_path) == folder
    assert (folder / "voices.json").stat().st_mtime_ns == stamp


def test_interrupted_synthesis_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(wave, rate, rng):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return wave[:800]

    monkeypatch.setattr(synth, "_clip", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.synthetic_digits(2, 1, seed=0, words=CLASSNAMES, cache=tmp_path)
    assert not list((tmp_path / "synthetic-digits").iterdir())


def test_voices_are_distinct_speakers():
    accents, variants = synth.speaker_count()
    voices = synth.draw_voices(accents * variants, seed=0, variants=synth.engine().variants())
    assert len({v.name for v in voices}) == accents * variants
    with pytest.raises(BinderConfigError, match="synthetic_speakers must be <="):
        synth.draw_voices(accents * variants + 1, seed=0, variants=synth.engine().variants())


def test_prosody_ranges_bound_the_speakers(tmp_path):
    variants = synth.engine().variants()
    default = synth.draw_voices(40, seed=0, variants=variants)
    assert {v.rate for v in default} <= set(range(120, 261)) and max(v.rate for v in default) > 200
    narrow = {"rate": [150, 160], "pitch": [40, 45], "range": [10, 10]}
    voices = synth.draw_voices(40, seed=0, variants=variants, prosody=narrow)
    assert [v.name for v in voices] == [v.name for v in default]  # the same speakers, only their prosody moves
    assert all(150 <= v.rate <= 160 and 40 <= v.pitch <= 45 and v.range == 10 for v in voices)
    tts = synth.Espeak(narrow)
    assert tts.draw(40, 0) == voices and tts.spec()["prosody"]["rate"] == [150.0, 160.0]
    a = synth.synthetic_digits(1, 1, seed=0, words=CLASSNAMES, cache=tmp_path, tts=tts)
    b = synth.synthetic_digits(1, 1, seed=0, words=CLASSNAMES, cache=tmp_path)
    assert a != b  # the ranges are part of the cache key
    assert json.loads((a / "voices.json").read_text())["prosody"]["pitch"] == [40.0, 45.0]
    rng = random.Random(0)  # a take's jitter keeps a speaker at the edge of the bounds within them
    takes = [tts.jitter(synth.Voice("en+f1", 80, 0, 0), rng) for _ in range(50)]
    assert all(80 <= v.rate <= 100 and 0 <= v.pitch <= 5 for v in takes) and {v.pitch for v in takes} != {0}


@pytest.mark.parametrize("key, value, match", [
    ("espeak_prosody", {"rate": [260, 120], "pitch": [15, 90], "range": [20, 90]},
     r"espeak_prosody.rate must be \[low, high\]"),
    ("espeak_prosody", {"rate": [120, 600], "pitch": [15, 90], "range": [20, 90]}, "<= 450"),
    ("espeak_prosody", {"rate": [120, 260], "pitch": [15, 90]}, r"missing: \['range'\]"),
    ("flite_prosody", {"stretch": [0.8, 1.3], "f0": [80, 250], "f0_std": [5, 35], "speed": [1, 2]},
     r"unknown: \['speed'\]"),
    ("flite_prosody", {"stretch": [0.8], "f0": [80, 250], "f0_std": [5, 35]}, r"flite_prosody.stretch must be"),
    ("flite_prosody", {"stretch": [0.8, 1.3], "f0": [float("nan"), 250], "f0_std": [5, 35]}, "flite_prosody.f0"),
    ("flite_prosody", {"stretch": [0.0, 1.3], "f0": [80, 250], "f0_std": [5, 35]}, "0.2 <= low"),
])
def test_bad_prosody_is_one_clear_error(key, value, match):
    with pytest.raises(BinderConfigError, match=match):
        DigitsConfig(**{key: value})


def test_prosody_is_a_hydra_override(compose, tmp_path):
    from binder.config import build_dataclass

    cfg = compose(["experiment=unseen_speakers", f"run_dir={tmp_path}", "data.flite_prosody.f0=[100,180]"])
    data = build_dataclass(DigitsConfig, cfg.data, "data")
    assert data.flite_prosody == {"stretch": [0.8, 1.35], "f0": [100.0, 180.0], "f0_std": [5.0, 35.0]}
    assert data.espeak_prosody == {k: [float(x) for x in v] for k, v in synth.ESPEAK_PROSODY.items()}


def test_training_split_only(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BINDER_CACHE", str(tmp_path))
    plain = DigitsWorld(DigitsConfig(root=str(data_root), holdout="speakers", test_speakers=["george"]))
    world = DigitsWorld(DigitsConfig(root=str(data_root), holdout="speakers", test_speakers=["george"],
                                     synthetic_speakers=3, synthetic_takes=2))
    train, test = world.recordings_of("train"), world.recordings_of("test")
    assert [r.path for r in test] == [r.path for r in plain.recordings_of("test")]
    extra = [r for r in train if r.synthetic]
    assert len(train) == len(plain.recordings_of("train")) + 60 == 2060
    assert {r.speaker for r in extra} == {"synth00", "synth01", "synth02"}
    assert sorted({r.digit for r in extra}) == list(range(10)) and {r.take for r in extra} == {0, 1}
    takes = DigitsWorld(DigitsConfig(root=str(data_root), synthetic_speakers=3, synthetic_takes=2))
    assert not any(r.synthetic for r in takes.recordings_of("test"))  # take 0 of a voice is not a test take


def test_synthetic_share_sets_each_epoch_s_mix(data_root, tmp_path, monkeypatch):
    from binder.datasets.digits import share_weights

    monkeypatch.setenv("BINDER_CACHE", str(tmp_path))
    world = DigitsWorld(DigitsConfig(root=str(data_root), speakers=["george", "jackson"], synthetic_speakers=4,
                                     synthetic_takes=2))
    paths = [r.path for r in world.recordings_of("train")]  # 900 recordings + 80 synthetic clips
    synthetic = np.array([r.synthetic for r in world.recordings_of("train")])
    weights = share_weights(paths, world, 0.25)
    assert weights.sum() == pytest.approx(1.0) and weights[synthetic].sum() == pytest.approx(0.25)
    assert len(set(weights[synthetic])) == 1 and len(set(weights[~synthetic])) == 1  # every clip of a kind alike
    drawn = torch.multinomial(torch.from_numpy(weights), 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert abs(synthetic[drawn.numpy()].mean() - 0.25) < 0.02  # 8% of the clips, a quarter of the draws
    plain = DigitsWorld(DigitsConfig(root=str(data_root), speakers=["george"]))
    with pytest.raises(BinderConfigError, match="synthetic_share=0.5 needs both recordings and synthetic voices"):
        share_weights([r.path for r in plain.recordings_of("train")], plain, 0.5)
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(BinderConfigError, match="data.synthetic_share must be in"):
            DigitsConfig(synthetic_share=bad, synthetic_speakers=1)
    with pytest.raises(BinderConfigError, match="synthetic_share=0.5 shares epochs with synthetic voices, and there"):
        DigitsConfig(synthetic_share=0.5)  # before any clip is made


def test_synthetic_share_drives_the_training_loader(small_data_root, random_anchor, tmp_path, monkeypatch):
    import binder
    from binder.datasets.digits import DigitsDataModule

    monkeypatch.setenv("BINDER_CACHE", str(tmp_path))
    model = binder.BindModel(random_anchor, {"audio": {}})
    dm = DigitsDataModule(model, ["audio"], "image", root=str(small_data_root), batch_size=4, synthetic_speakers=2,
                          synthetic_takes=1, synthetic_share=0.8, augment=False)
    dm.setup()
    loader = dm.train_dataloader().iterables["audio"]  # 20 recordings + 20 synthetic clips
    assert isinstance(loader.sampler, torch.utils.data.WeightedRandomSampler) and len(loader.sampler) == 40
    synthetic = {str(r.path) for r in dm.world.recordings if r.synthetic}
    paths = [str(r.path) for r in dm.world.recordings_of("train")]
    assert len(synthetic) == 20 and len(paths) == 40
    torch.manual_seed(0)
    drawn = [paths[i] in synthetic for _ in range(50) for i in loader.sampler]
    assert abs(np.mean(drawn) - 0.8) < 0.04  # not the clips' 0.5
    plain = DigitsDataModule(model, ["audio"], "image", root=str(small_data_root), batch_size=4, augment=False)
    plain.setup()
    assert isinstance(plain.train_dataloader().iterables["audio"].sampler, torch.utils.data.RandomSampler)


def test_voice_files_are_hashed_once_per_version(tmp_path, monkeypatch):
    import binder.files

    reads = []
    real = binder.files.file_digest
    monkeypatch.setattr(binder.files, "file_digest", lambda p: reads.append(p) or real(p))
    voice = tmp_path / "v.flitevox"
    voice.write_bytes(b"voice one")
    first = synth.voice_digest(voice)
    assert synth.voice_digest(voice) == first and len(reads) == 1  # the second call is remembered
    voice.write_bytes(b"voice two, edited")
    assert synth.voice_digest(voice) != first and len(reads) == 2  # an edited file is read again


def test_bad_settings(monkeypatch):
    with pytest.raises(BinderConfigError, match="synthetic_speakers"):
        DigitsConfig(synthetic_speakers=-1)
    with pytest.raises(BinderConfigError, match="synthetic_takes"):
        DigitsConfig(synthetic_takes=0)
    with pytest.raises(BinderConfigError, match="no voice 'xx\\+f3'"):
        synth.engine().say("one", synth.Voice("xx+f3", 175, 50, 50))
    monkeypatch.setattr(synth, "_ENGINE", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    with pytest.raises(BinderConfigError, match=r"binder-embed\[speech\]"):
        synth.engine()


def test_unseen_speakers_recipe_composes(compose, tmp_path):
    from binder.recipes.speakers import fold_config
    from binder.training.stages import stage_config, stage_overrides

    cfg = compose(["experiment=leave_one_speaker_out_unseen", f"run_dir={tmp_path}"])
    fold = fold_config(cfg, "george", tmp_path)
    assert fold.task == "binder.training.bind" and fold.data.holdout == "speakers"
    assert list(fold.data.test_speakers) == ["george"] and fold.data.synthetic_speakers == 600
    assert fold.modality.audio.augment.variants == 4 and fold.trainer.max_epochs == 20
    stage = stage_config(fold, *stage_overrides(fold)[0], str(tmp_path / "george" / "model"))
    assert stage.run_dir == str(tmp_path / "george" / "stages" / "recordings")
    assert stage.data.synthetic_speakers == 0 and stage.data.synthetic_flite_speakers == 0
    assert stage.data.synthetic_share is None and list(stage.data.test_speakers) == ["george"]
    assert stage.optim.lr == 2e-4 and stage.trainer.max_epochs < 20 and stage.modality == fold.modality
    single = compose(["experiment=unseen_speakers", f"run_dir={tmp_path}"])
    assert single.task == "binder.training.bind" and single.data.synthetic_speakers == 600


# --------------------------------------------------------------------------- CMU Flite
@pytest.fixture
def flite():
    """Skip (or, with BINDER_REQUIRE_FLITE=1, fail) without the ``flite`` program."""
    if shutil.which("flite") is None:
        if os.environ.get("BINDER_REQUIRE_FLITE") == "1":
            pytest.fail("no flite program (BINDER_REQUIRE_FLITE=1): apt-get install flite")
        pytest.skip("no flite program (apt-get install flite)")


def test_flite_clips_are_fsdd_like_and_reproducible(flite, tmp_path):
    tts = synth.Flite()
    assert tts.voices and "awb_time" not in tts.voices  # a clock-only voice cannot say the digits
    a = synth.synthetic_digits(2, 1, seed=3, words=CLASSNAMES, cache=tmp_path / "a", tts=tts)
    b = synth.synthetic_digits(2, 1, seed=3, words=CLASSNAMES, cache=tmp_path / "b", tts=synth.Flite())
    names = sorted(p.name for p in a.glob("*.wav"))
    assert len(names) == 2 * 10 and names[0] == "0_flite00_0.wav"
    for name in names:
        wave, rate = sf.read(a / name)
        assert rate == 8000 and 0.1 < len(wave) / rate < 2.0
        assert np.isfinite(wave).all() and 0.25 < np.abs(wave).max() < 0.95
        assert (b / name).read_bytes() == (a / name).read_bytes()  # Flite keeps no state: bit for bit
    voices = [v["name"] for v in json.loads((a / "voices.json").read_text())["voices"]]
    assert voices == tts.voices[:2]
    espeak = synth.synthetic_digits(2, 1, seed=3, words=CLASSNAMES, cache=tmp_path / "a")
    assert espeak != a  # one cache folder per engine


def test_flite_prosody_changes_the_voice(flite):
    tts = synth.Flite(["slt"])
    slow, fast = (tts.speak("seven", synth.FliteVoice("slt", s, 150.0, 10.0))[0] for s in (1.3, 0.8))
    assert len(slow) > 1.3 * len(fast)


def test_flite_prosody_ranges_bound_the_speakers(flite):
    ranges = {"stretch": [1.0, 1.1], "f0": [180, 200], "f0_std": [0, 0]}
    tts = synth.Flite(["slt", "kal"], prosody=ranges)
    voices = tts.draw(30, seed=0)
    assert all(1.0 <= v.stretch <= 1.1 and 180 <= v.f0 <= 200 and v.f0_std == 0 for v in voices)
    assert [v.name for v in voices[:3]] == ["slt", "kal", "slt"]
    assert tts.spec()["prosody"]["f0"] == [180.0, 200.0] and synth.Flite(["slt", "kal"]).spec() != tts.spec()


def test_flite_voices_resolve(flite, tmp_path, monkeypatch):
    assert synth.Flite(["slt", "kal"]).voices == ["slt", "kal"]
    with pytest.raises(BinderConfigError, match="neither a built-in voice"):
        synth.Flite(["nobody"])
    with pytest.raises(BinderConfigError, match="is not a file"):
        synth.Flite([str(tmp_path / "missing.flitevox")])
    (tmp_path / "bad.flitevox").write_text("not a voice")  # flite itself would fall back to its default voice
    with pytest.raises(BinderConfigError, match="is not a Flite voice"):
        synth.Flite([str(tmp_path / "bad.flitevox")])
    subprocess.run(["flite", "-voice", "slt", "-voicedump", str(tmp_path / "slt.flitevox")], check=True)
    dumped = synth.Flite([str(tmp_path / "slt.flitevox")])
    assert dumped.voices == [str(tmp_path / "slt.flitevox")] and dumped.spec()["flite_voices"][0].startswith("slt.")
    wave, rate = dumped.speak("three", synth.FliteVoice(dumped.voices[0], 1.0, 150.0, 10.0))
    same, _ = synth.Flite(["slt"]).speak("three", synth.FliteVoice("slt", 1.0, 150.0, 10.0))
    assert np.array_equal(wave, same)  # the file's voice, not flite's default one
    fetched = []

    def fake_download(url, dest, **kwargs):
        fetched.append((url, dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["flite", "-voice", "slt", "-voicedump", str(dest)], check=True)
        return dest

    monkeypatch.setattr("binder.download.download", fake_download)
    tts = synth.Flite(["cmu_us_ljm"], cache=tmp_path)
    assert fetched == [("http://www.festvox.org/flite/packed/flite-2.0/voices/cmu_us_ljm.flitevox",
                        tmp_path / "flite-voices" / "cmu_us_ljm.flitevox")]
    assert tts.voices == [str(tmp_path / "flite-voices" / "cmu_us_ljm.flitevox")]


def test_flite_missing_is_one_clear_error(data_root, monkeypatch):
    from binder.datasets.digits import DigitsDataModule

    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(BinderConfigError, match="apt install flite"):
        synth.Flite()
    with pytest.raises(BinderConfigError, match="apt install flite"):  # the data check, before anything expensive
        DigitsDataModule.check({"root": str(data_root), "synthetic_flite_speakers": 2}, ["audio"], "image")


def test_flite_voices_join_the_training_split_only(flite, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BINDER_CACHE", str(tmp_path))
    world = DigitsWorld(DigitsConfig(root=str(data_root), holdout="speakers", test_speakers=["george"],
                                     synthetic_speakers=1, synthetic_flite_speakers=2, synthetic_takes=1,
                                     flite_voices=["kal", "slt"]))
    extra = [r for r in world.recordings_of("train") if r.synthetic]
    assert {r.speaker for r in extra} == {"synth00", "flite00", "flite01"} and len(extra) == 30
    assert not any(r.synthetic for r in world.recordings_of("test"))
    with pytest.raises(BinderConfigError, match="synthetic_flite_speakers"):
        DigitsConfig(synthetic_flite_speakers=-1)
