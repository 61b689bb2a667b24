"""Training stages (``stages.<name>``): checked configs, the merged stage config, and a real
composed run whose stage fine-tunes the model the run saved."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import binder
from binder.errors import BinderConfigError
from binder.training import train
from binder.training.stages import _processes, stage_config, stage_overrides
from helpers import small_encoder


def _cfg(stages, **trainer):
    return OmegaConf.create({"run_dir": "/runs/a", "init_from": None, "seed": 0, "stages": stages,
                             "optim": {"lr": 2e-3, "warmup_epochs": 2.0}, "data": {"synthetic_speakers": 600},
                             "trainer": {"devices": 1, "max_epochs": 20, **trainer}})


def test_stage_overrides_in_order_and_null_dropped():
    cfg = _cfg({"recordings": {"optim": {"lr": 2e-4}}, "off": None, "last": {"trainer": {"max_epochs": 1}}})
    assert stage_overrides(cfg) == [("recordings", {"optim": {"lr": 2e-4}}), ("last", {"trainer": {"max_epochs": 1}})]
    assert stage_overrides(_cfg(None)) == [] and stage_overrides(_cfg({})) == []


@pytest.mark.parametrize("stages, match", [
    ({"a": {"init_from": "x"}}, r"stages.a sets \['init_from'\]"),
    ({"a": {"run_dir": "x", "stages": {}}}, r"sets \['run_dir', 'stages'\]"),
    ({"base": {"optim": {"lr": 1e-4}}}, "stage name"),
    ({"a/b": {"optim": {"lr": 1e-4}}}, "stage name"),
    ({"a": 3}, "must be a partial config"),
    ([{"optim": {}}], "must map a stage name"),
])
def test_bad_stages_are_refused(stages, match):
    with pytest.raises(BinderConfigError, match=match):
        stage_overrides(_cfg(stages))


@pytest.mark.parametrize("trainer, n", [({"devices": 1}, 1), ({"devices": 2}, 2), ({"devices": [0, 1]}, 2),
                                        ({"devices": "0,1"}, 2), ({"devices": 1, "num_nodes": 2}, 2),
                                        ({"devices": "auto", "accelerator": "cpu"}, 1)])
def test_processes(trainer, n):
    assert _processes(OmegaConf.create(trainer)) == n


def test_stages_refuse_several_processes():
    with pytest.raises(BinderConfigError, match="one process"):
        stage_overrides(_cfg({"a": {"optim": {"lr": 1e-4}}}, devices=2))
    with pytest.raises(BinderConfigError, match="one process"):  # a stage of its own on two devices
        stage_overrides(_cfg({"a": {"trainer": {"devices": 2}}}))
    assert stage_overrides(_cfg(None, devices=2)) == []  # no stages: a multi-device run as before


def test_stage_config_merges_over_the_run():
    cfg = _cfg({"recordings": {}})
    sub = stage_config(cfg, "recordings", {"data": {"synthetic_speakers": 0}, "optim": {"lr": 2e-4}}, "/runs/a/model")
    assert sub.init_from == "/runs/a/model" and sub.run_dir == str(Path("/runs/a/stages/recordings"))
    assert sub.data.synthetic_speakers == 0 and sub.optim.lr == 2e-4 and sub.optim.warmup_epochs == 2.0
    assert sub.trainer.max_epochs == 20 and "stages" not in sub and sub.resume is False
    assert cfg.data.synthetic_speakers == 600  # the run's own config is untouched


def test_a_run_with_a_stage(compose, tiny_anchor, small_data_root, tmp_path):
    cfg = compose(["modality=audio", *small_encoder("audio"), "trainer.enable_progress_bar=false",
                   f"run_dir={tmp_path}", f"data.root={small_data_root}", "data.batch_size=8", "trainer.max_epochs=1",
                   "+trainer.limit_train_batches=2", "eval.zero_shot=true",
                   "+stages.tune.optim.lr=1e-4", "+stages.tune.trainer.max_epochs=1"])
    metrics = train(cfg)
    stage_dir = (tmp_path / "stages" / "tune").resolve()
    assert metrics["model_dir"] == str(stage_dir / "model")
    assert set(metrics["stages"]) == {"base", "tune"}
    assert metrics["stages"]["base"]["model_dir"] == str((tmp_path / "model").resolve())
    assert metrics["zero_shot"] == metrics["stages"]["tune"]["zero_shot"] and metrics["zero_shot"]
    total = metrics["stages"]["base"]["fit_seconds"] + metrics["stages"]["tune"]["fit_seconds"]
    assert metrics["finetune"]["fit_seconds"] == pytest.approx(total, abs=0.11)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert json.loads((stage_dir / "metrics.json").read_text())["model_dir"] == str(stage_dir / "model")
    base, tuned = binder.load(tmp_path / "model"), binder.load(stage_dir / "model")
    assert tuned.configs == base.configs
    head = "heads.audio.weight"  # the stage started from the run's model and trained it a little further
    diff = (base.state_dict()[head] - tuned.state_dict()[head]).abs().max()
    assert 0 < diff < 0.01


@pytest.mark.parametrize("override, match", [
    ("+stages.tune.optim.lrr=1", "stages.tune: Key 'lrr' not in 'OptimConfig'"),
    ("+stages.tune.optim.lr=abc", "stages.tune: Value 'abc'"),
    ("+stages.tune.data.synthetc=0", "not in 'DigitsConfig'"),
    ("+stages.tune.trainer.max_epoch=3", "max_epoch"),
])
def test_a_bad_stage_fails_before_the_run_trains(override, match, compose, tmp_path):
    cfg = compose(["modality=audio", f"run_dir={tmp_path}", override])
    with pytest.raises(BinderConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "model").exists() and not (tmp_path / "checkpoints").exists()
