"""Audio augmentation switches: speed, pitch, room, noise (waveform variants), VTLP and SpecAugment
(per read), their checks, and the data modules that use them; the leave-one-speaker-out recipe's
folds and table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import binder
from binder.errors import BinderConfigError
from helpers import chirp

AUDIO = "audio"


def parts(**augment):
    """(config, preprocessor, augment) of the tiny audio preset with ``augment`` settings."""
    spec = binder.get_modality(AUDIO)
    cfg = spec.config_cls(augment=augment)
    return cfg, spec.preprocessor_cls(cfg), spec.augment_cls(cfg)


def valid_frames(aug, clip) -> int:
    return aug._valid_frames(clip)


QUIET = {"time_stretch": 0.0, "max_shift": 0, "gain_db": 0.0, "freq_masks": 0, "time_masks": 0}


@pytest.mark.parametrize("bad, match", [
    ({"speed": 0.7}, "speed must be in"),
    ({"noise_prob": 1.5}, "probability"),
    ({"snr_db": [30, 5]}, "low <= high"),
    ({"rt60": [0.0, 0.5]}, "low > 0"),
    ({"variants": -1}, "variants must be >= 0"),
])
def test_bad_augment_settings_are_refused(bad, match):
    with pytest.raises(BinderConfigError, match=match):
        parts(**bad)


def test_switches_off_means_no_waveform_variants():
    _, pre, aug = parts(variants=3)
    assert aug.variants == 0  # no waveform switch on: nothing to vary
    _, pre, aug = parts(variants=3, speed=0.1)
    clips = aug.raw((chirp(0.8, 8000), 8000), pre)
    assert clips.shape == (3, 1, 128, 204) and torch.isfinite(clips).all()


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_speed_changes_duration_and_pitch_keeps_it(factor, monkeypatch):
    wave = (chirp(1.0, 16000), 16000)
    _, pre, aug = parts(**QUIET, speed=0.3, variants=1)
    base = valid_frames(aug, pre(wave, num_clips=1)[0])
    monkeypatch.setattr(aug, "_uniform", lambda low, high: factor)
    fast = valid_frames(aug, aug.raw(wave, pre)[0])
    assert fast == pytest.approx(base / factor, abs=2)
    _, pre, aug = parts(**QUIET, pitch=4.0, variants=1)
    monkeypatch.setattr(aug, "_uniform", lambda low, high: 12 * np.log2(factor))  # semitones
    shifted = aug.raw(wave, pre)[0]
    assert valid_frames(aug, shifted) == pytest.approx(base, abs=2)
    plain = pre(wave, num_clips=1)[0]
    # the chirp's energy moves up the mel axis with the pitch (down when factor < 1)
    centroid = [float((c[0, :, :base].exp().sum(1) * torch.arange(128)).sum() / c[0, :, :base].exp().sum())
                for c in (plain, shifted)]
    assert (centroid[1] - centroid[0]) * (factor - 1) > 0


def test_noise_at_the_drawn_snr_and_room_response(monkeypatch):
    _, _, aug = parts(**QUIET, noise_prob=1.0, snr_db=[10.0, 10.0], variants=1)
    wave = torch.from_numpy(chirp(1.0, 16000))[None]
    noisy, restore = aug.perturb(wave, 16000)
    noise = noisy - wave
    snr = 10 * torch.log10(wave.pow(2).mean() / noise.pow(2).mean())
    assert restore == 1.0 and float(snr) == pytest.approx(10.0, abs=0.2)
    _, _, aug = parts(**QUIET, room_prob=1.0, rt60=[0.3, 0.3], variants=1)
    wet, _ = aug.perturb(wave, 16000)
    assert wet.shape[-1] > wave.shape[-1] and float(wet.abs().max()) == pytest.approx(float(wave.abs().max()), rel=1e-4)
    from binder.modalities.audio import room_response

    h = room_response(0.3, 16000)
    energy = h[1:].pow(2).flip(0).cumsum(0).flip(0)  # Schroeder's backward integral of the tail
    t60 = int(torch.nonzero(energy < energy[0] * 1e-6)[0]) / 16000
    assert 0.2 < t60 <= 0.3


def test_vtlp_warps_the_frequency_axis_and_keeps_padding():
    cfg, pre, aug = parts(**QUIET, vtlp=0.2)
    clip = pre((chirp(0.5, 8000), 8000), num_clips=1)[0]
    assert torch.allclose(aug.vtlp(clip, 1.0), clip, atol=1e-5)  # alpha 1: unchanged
    warped = aug.vtlp(clip, 1.15)
    n = valid_frames(aug, clip)
    assert torch.allclose(warped[..., n:], torch.full_like(warped[..., n:], cfg.pad_value))
    low = clip[0, :, :n].exp().sum(1)
    high = warped[0, :, :n].exp().sum(1)
    bins = torch.arange(128, dtype=torch.float32)
    assert float((high * bins).sum() / high.sum()) > float((low * bins).sum() / low.sum())  # formants move up


def test_every_switch_at_once_keeps_shape_padding_and_finiteness():
    cfg, pre, aug = parts(variants=2, speed=0.1, pitch=2.0, noise_prob=0.5, room_prob=0.5, vtlp=0.1)
    torch.manual_seed(0)
    clips = aug.raw((chirp(0.7, 8000), 8000), pre)
    for clip in clips:
        out = aug(clip.clone())
        assert out.shape == (1, 128, 204) and torch.isfinite(out).all()


def test_imagebind_preset_preprocessing_is_untouched():
    """Augmentation settings never reach the preprocessor: the reference-equal path is unchanged."""
    spec = binder.get_modality(AUDIO)
    wave = (chirp(3.0, 16000), 16000)
    plain = spec.preprocessor_cls(spec.config_cls(preset="imagebind"))(wave)
    augmented = spec.preprocessor_cls(spec.config_cls(preset="imagebind", augment={"variants": 4, "speed": 0.2,
                                                                                    "vtlp": 0.2}))(wave)
    assert torch.equal(plain, augmented)


def test_digits_training_items_carry_the_variants(small_data_root, random_anchor):
    from binder.datasets.digits import DigitsDataModule

    model = binder.BindModel(random_anchor, {AUDIO: {"augment": {"variants": 2, "speed": 0.1, "noise_prob": 1.0}}})
    dm = DigitsDataModule(model, [AUDIO], root=str(small_data_root), batch_size=4)
    dm.setup("fit")
    assert dm.train_sets[AUDIO].inputs[0].shape == (3, 1, 128, 204)  # the recording and two variants
    assert dm.val_sets[AUDIO].inputs[0].shape == (1, 1, 128, 204)  # held-out data is never augmented
    assert dm.train_sets[AUDIO][0][AUDIO].shape == (1, 1, 128, 204)


# ----------------------------------------------------------------------------------------------
# The leave-one-speaker-out recipe
# ----------------------------------------------------------------------------------------------

def test_folds_and_table(compose, tmp_path):
    from binder.recipes.speakers import TAKES, fold_config, format_table, table

    cfg = compose(["experiment=leave_one_speaker_out", f"run_dir={tmp_path}"])
    fold = fold_config(cfg, "lucas", tmp_path)
    assert fold.task == "binder.training.bind" and fold.run_dir == str(tmp_path / "lucas")
    assert fold.data.holdout == "speakers" and list(fold.data.test_speakers) == ["lucas"] and "speakers" not in fold
    assert fold.callbacks.checkpoint.dirpath == f"{tmp_path / 'lucas'}/checkpoints"  # each fold in its own folder
    assert fold_config(cfg, TAKES, tmp_path).data.holdout == "takes"
    rows = {s: {"top1": t, "top5": 99.0, "n": 500, "seconds": 100.0} for s, t in
            [("george", 90.0), ("lucas", 74.0), ("nicolas", 95.0)]}
    summary = table({**rows, TAKES: {"top1": 99.2, "top5": 100.0, "n": 250}})
    assert summary["mean"] == pytest.approx(86.33, abs=0.01) and summary["worst"] == "lucas"
    assert summary["met"] is False  # lucas is below 75
    text = format_table(summary)
    assert "| speaker lucas | 74.0 |" in text and "**86.3**" in text and "takes 0-4" in text
    assert "stage_means" not in summary and "top-1 |" not in text.splitlines()[0].split("top-5")[1]

    # Folds that ran training stages (cfg.stages) show the top-1 after each stage and its mean.
    staged = {s: dict(r, stages={"base": r["top1"] - 2, "recordings": r["top1"]}) for s, r in rows.items()}
    summary = table({**staged, TAKES: {"top1": 99.2, "top5": 100.0, "n": 250,
                                       "stages": {"base": 97.6, "recordings": 99.2}}})
    assert summary["stage_means"] == {"base": pytest.approx(84.33, abs=0.01), "recordings": pytest.approx(86.33, abs=0.01)}
    lines = format_table(summary).splitlines()
    assert lines[0].endswith("| base top-1 | recordings top-1 |") and lines[1].count("---:") == 6
    assert "| speaker lucas | 74.0 | 99.0 | 500 | 100 | 72.0 | 74.0 |" in lines
    assert any(line.startswith("| takes 0-4") and line.endswith("| 97.6 | 99.2 |") for line in lines)
    assert "| **mean over speakers** | **86.3** | | | | 84.3 | 86.3 |" in lines


def test_recipe_refuses_unknown_speakers_and_other_modalities(compose, data_root, tmp_path):
    from binder.training import train

    with pytest.raises(BinderConfigError, match="not FSDD speakers"):
        train(compose(["experiment=leave_one_speaker_out", f"run_dir={tmp_path}", "speakers.speakers=[nobody]"]))
    with pytest.raises(BinderConfigError, match="use modality=audio"):
        train(compose(["experiment=leave_one_speaker_out", f"run_dir={tmp_path}", "modality=depth"]))


def test_utterance_normalisation_centres_each_clip_on_its_own_frames():
    """normalize=utterance: each clip's per-bin mean over its own frames is the global mean (0 after
    normalisation), a louder or filtered copy of a recording gives the same features, padded
    frames keep the padding value; global (the default) keeps the level."""
    spec = binder.get_modality(AUDIO)
    wave = chirp(seconds=0.8, rate=16000, seed=3)
    coloured = torch.from_numpy(wave)[None] * 3.0  # (1, T): 9.5 dB louder
    coloured = torch.nn.functional.conv1d(coloured[None], torch.tensor([[[0.6, 0.4]]]), padding=1)[0, :, 1:]
    cmn = spec.preprocessor_cls(spec.config_cls(normalize="utterance"))
    glob = spec.preprocessor_cls(spec.config_cls())
    a, b = cmn((wave, 16000))[0, 0], cmn((coloured[0].numpy(), 16000))[0, 0]  # (mel, frames)
    frames = 78  # 0.8 s at a 10 ms hop
    assert a[:, :frames].mean(-1).abs().max() < 1e-4
    assert torch.allclose(a[:, frames + 2:], torch.full_like(a[:, frames + 2:], cmn.cfg.pad_value))
    assert (a[:, 2:frames - 2] - b[:, 2:frames - 2]).abs().mean() < 0.02  # level and a fixed filter removed
    g_a, g_b = glob((wave, 16000))[0, 0], glob((coloured[0].numpy(), 16000))[0, 0]
    assert (g_a[:, 2:frames - 2] - g_b[:, 2:frames - 2]).abs().mean() > 0.1
    with pytest.raises(BinderConfigError, match="normalize"):
        spec.config_cls(normalize="per-speaker")
