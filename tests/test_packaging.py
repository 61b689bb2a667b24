"""binder as an installed package: the ``binder`` command, a wheel used outside the checkout,
config groups that cannot drift, and a first run that reads well."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from binder.cli import main as cli_main
from helpers import small_encoder

REPO_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# The CLI
# ----------------------------------------------------------------------------------------------

def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "download", "modalities"):
        assert command in out
    assert "binder train modality=audio" in out  # examples a newcomer can copy
    assert cli_main([]) == 1  # no command: help and a non-zero status


def test_cli_modalities_and_version(capsys):
    assert cli_main(["modalities"]) == 0
    out = capsys.readouterr().out
    assert {line.split()[0] for line in out.splitlines()} >= {"audio", "depth", "thermal", "imu", "video"}
    assert "binder.modalities.audio" in out
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("binder ")


def test_cli_download_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["download", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: binder download") and "--root" in out


def test_train_help_is_hydras_with_binders_examples():
    out = subprocess.run([sys.executable, "-m", "binder.cli", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "binder train: train encoders" in out
    for group in ("modality:", "anchor:", "data:", "trainer:", "callbacks:", "logger:", "experiment:"):
        assert group in out, group
    assert "five_modalities" in out and "binder train 'modality=[audio,depth]'" in out


# ----------------------------------------------------------------------------------------------
# A wheel installed outside the checkout
# ----------------------------------------------------------------------------------------------

def source_tree(dest: Path) -> Path:
    """The checkout's files (tracked, and new ones git does not ignore) copied to ``dest``: a wheel
    built there holds what a fresh clone would, never a stale ``build/`` of this checkout."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for name in listed:
        if (REPO_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = source_tree(tmp_path_factory.mktemp("source"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, text=True)
    (path,) = out.glob("binder_embed-*.whl")
    return path


def test_wheel_holds_only_the_binder_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"binder"}
    for needed in ("binder/modalities/audio.py", "binder/datasets/digits.py", "binder/configs/train.yaml",
                   "binder/configs/modality/audio.yaml", "binder/configs/hydra/job_logging/binder.yaml",
                   "binder/model_configs/binder-digits.json"):
        assert needed in names, needed
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "binder = binder.cli:main" in entry_points


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with binder installed from the wheel; its other dependencies
    come from this environment's site-packages (a path entry: their .pth files, and so this
    checkout's editable binder, are not activated), like ``--system-site-packages``."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return venv


def test_binder_train_from_the_wheel_anywhere(wheel_env, tiny_anchor, small_data_root, binder_cache, tmp_path):
    where = subprocess.run([str(wheel_env / "bin" / "python"), "-c", "import binder; print(binder.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert str(wheel_env) in where and str(REPO_ROOT) not in where  # not the checkout
    env = {**os.environ, "BINDER_CACHE": str(binder_cache), "BINDER_DATA": str(small_data_root)}
    run = subprocess.run([str(wheel_env / "bin" / "binder"), "train", "modality=audio", *small_encoder("audio"),
                          "data.batch_size=8", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (run_dir,) = (tmp_path / "outputs").glob("*/*-audio")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert "audio->text (emergent)" in run.stdout


# ----------------------------------------------------------------------------------------------
# Config groups that cannot drift
# ----------------------------------------------------------------------------------------------

def test_unknown_keys_name_the_key_and_group(compose, tmp_path):
    from hydra.errors import ConfigCompositionException

    for override, key in (("data.batchsize=3", "batchsize"), ("anchor.modle=x", "modle"),
                          ("optim.learning_rate=1", "learning_rate"), ("modality.audio.encoder.widht=3", "widht")):
        with pytest.raises(ConfigCompositionException) as err:
            compose([override, f"run_dir={tmp_path}"])
        assert key in str(err.value.__cause__ or err.value), override


def test_unknown_trainer_callback_and_logger_keys(compose, tmp_path):
    from binder.errors import BinderConfigError
    from binder.training import check_groups

    for override, where in (("+trainer.max_epoch=3", "'trainer'"),
                            ("+callbacks.checkpoint.every=3", "'callbacks.checkpoint'"),
                            ("+logger.csv.folder=x", "'logger.csv'")):
        with pytest.raises(BinderConfigError, match=where):
            check_groups(compose([override, f"run_dir={tmp_path}"]))


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "[csv,tensorboard]", "none"])
def test_logger_options_need_no_code(logger, compose, tmp_path, monkeypatch):
    from binder.training import check_groups, make_trainer

    cfg = compose([f"logger={logger}", f"run_dir={tmp_path}"])
    check_groups(cfg)  # every key is an argument of its logger class
    names = [k for k in cfg.logger]
    assert names == ([] if logger == "none" else logger.strip("[]").split(","))
    if logger == "wandb":
        pytest.importorskip("wandb")
        monkeypatch.setenv("WANDB_MODE", "offline")
    trainer = make_trainer(cfg, tmp_path)
    kinds = sorted(type(lg).__name__ for lg in trainer.loggers)
    expected = {"csv": "CSVLogger", "tensorboard": "TensorBoardLogger", "wandb": "WandbLogger"}
    assert kinds == sorted(expected[n] for n in names)


def test_callbacks_group(compose, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from binder.training.checkpoints import ResumableCheckpoint
    from binder.training import make_trainer

    trainer = make_trainer(compose([f"run_dir={tmp_path}", "callbacks.checkpoint.every_n_steps=7"]), tmp_path)
    (ckpt,) = [c for c in trainer.callbacks if isinstance(c, ResumableCheckpoint)]
    assert ckpt.path == tmp_path / "checkpoints" / "last.ckpt" and ckpt.every_n_steps == 7
    assert not [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]  # Lightning adds none of its own
    none = make_trainer(compose(["callbacks=none", f"run_dir={tmp_path}"]), tmp_path)
    assert not [c for c in none.callbacks if isinstance(c, (ModelCheckpoint, ResumableCheckpoint))]


# ----------------------------------------------------------------------------------------------
# A first run that reads well
# ----------------------------------------------------------------------------------------------

def test_user_errors_are_one_line_and_fail(tmp_path):
    """A bad data path: one line naming it, exit status 2, before anything is built; the run
    folder is marked failed."""
    run = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "data=manifest", f"data.path={tmp_path}/no.csv",
                          f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: manifest '{tmp_path}/no.csv' does not exist: set data.path "
                                               "to your CSV or .jsonl file of pairs"]
    assert "Traceback" not in run.stdout + run.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "no.csv" in status["error"]
    assert not (tmp_path / "run" / "model").exists()


def test_quiet_first_run(tiny_anchor, small_data_root, binder_cache, tmp_path):
    """No third-party noise: open_clip's model-identifier and random-weights messages, Lightning's
    tips and device lines, and progress-bar fragments stay out of a run's output."""
    env = {**os.environ, "BINDER_CACHE": str(binder_cache), "BINDER_DATA": str(small_data_root)}
    run = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *small_encoder("audio"), "data.batch_size=8",
                          "trainer.max_epochs=1", "+trainer.limit_train_batches=2", f"hydra.run.dir={tmp_path}/run"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    text = run.stdout + run.stderr
    for noise in ("Parsing model identifier", "initialized randomly", "Tip:", "GPU available", "TPU available",
                  "LeafSpec", "eval mode", "\r", "it/s]"):
        assert noise not in text, noise
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) <= 12, lines
    assert lines[0].startswith("binder: audio against image | data: digits world at ")


@pytest.mark.parametrize("argv, message", [(["smell"], "invalid choice: 'smell'"), (["download"], "--root"),
                                           (["modalities", "a", "b"], "unrecognized arguments")])
def test_cli_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("modality=smell", "Could not find 'modality/smell'"),
    ("task=binder.nothing.here", "task='binder.nothing.here' is not an importable function"),
    ("data.root=/no/such/root", "data root '/no/such/root' has no mnist/ folder"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt' does not exist"),
])
def test_train_cli_user_errors(tmp_path, override, message):
    run = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), override, f"hydra.run.dir={tmp_path}/run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode != 0 and message in run.stderr + run.stdout
    assert "Traceback" not in run.stderr + run.stdout
