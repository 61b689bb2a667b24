"""Synthetic digit voices (eSpeak NG): reproducible, cached once, training split only, clear errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile as sf

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

    cfg = compose(["experiment=leave_one_speaker_out_unseen", f"run_dir={tmp_path}"])
    fold = fold_config(cfg, "george", tmp_path)
    assert fold.task == "binder.training.bind" and fold.data.holdout == "speakers"
    assert list(fold.data.test_speakers) == ["george"] and fold.data.synthetic_speakers == 600
    assert fold.modality.audio.augment.variants == 4 and fold.trainer.max_epochs == 10
    single = compose(["experiment=unseen_speakers", f"run_dir={tmp_path}"])
    assert single.task == "binder.training.bind" and single.data.synthetic_speakers == 600
