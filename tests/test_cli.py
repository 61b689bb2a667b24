"""The ``binder`` command as a whole: every user error is one line and exit status 2, whichever
command group raises it (argparse-free checks, Hydra's composition, the downloader)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from binder.cli import main


def binder(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "binder.cli", *argv], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv, message", [
    (["train", "modality=nope"], "Could not find 'modality/nope'; available: audio, depth"),
    (["train", "modality.audio.bogus=1"], "Could not override 'modality.audio.bogus'. Key 'bogus' not in"),
    (["train", "data=manifest", "data.path=/nowhere/pairs.csv"], "manifest '/nowhere/pairs.csv' does not exist"),
])
def test_training_errors_are_one_line(argv, message):
    run = binder(*argv)
    err = run.stderr.strip().splitlines()
    assert run.returncode == 2 and err[-1].startswith("error: ") and message in err[-1], run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "HYDRA_FULL_ERROR" not in run.stderr


def test_download_errors_are_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data root should be")
    run = binder("download", "--root", str(blocker / "data"), "--base-url-mnist", "http://127.0.0.1:9/",
                 "--base-url-fsdd", "http://127.0.0.1:9/fsdd.zip", "--timeout", "1")
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error: ")


def test_models_and_modalities_list_what_is_registered(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bind " in out and "imagebind_huge" in out
    assert main(["modalities", "a*"]) == 0 and capsys.readouterr().out.split()[0] == "audio"


def test_help_names_every_command_group():
    out = binder("--help", timeout=60).stdout
    for command in ("train", "download", "modalities", "models", "index", "search", "embed", "serve", "eval"):
        assert f"    {command}" in out, command
