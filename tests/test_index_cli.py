"""The retrieval commands: binder index build|add|delete|info, search, embed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import binder
from binder.cli import main

from helpers import write_blobs


@pytest.fixture(scope="module")
def model_dir(audio_model, tmp_path_factory) -> Path:
    return binder.save(audio_model, tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_blobs(root, [f"p{i}.png" for i in range(12)])
    (root / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_build_search_delete_from_the_command_line(capsys, model_dir, photos, tmp_path):
    idx = tmp_path / "photos.idx"
    status, out, _ = run(capsys, "index", "build", "--model", model_dir, "--modality", "image", photos, "-o", idx,
                         "--workers", "0")
    assert status == 0 and "indexed 12" in out and "skipped 1:" in out
    assert f"{photos / 'bad.jpg'}: image file" in out  # every skipped file with its reason
    status, out, _ = run(capsys, "search", idx, "--model", model_dir, "--image", photos / "p3.png", "-k", "3")
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["rank", "score", "path", "metadata"] and len(lines) == 4
    assert lines[1].split()[2] == str(photos / "p3.png")
    status, out, _ = run(capsys, "search", idx, "--model", model_dir, "--image", photos / "p3.png", "--text", "a",
                         "--weights", "0.7,0.3", "-k", "2", "--json", "--html", tmp_path / "hits.html")
    result = json.loads(out)
    assert status == 0 and [h["rank"] for h in result["hits"]] == [1, 2] and result["weights"] == [0.7, 0.3]
    page = (tmp_path / "hits.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 2 and "p3.png" in page
    status, out, _ = run(capsys, "index", "delete", idx, "--ids", 0, 1)
    assert status == 0 and "deleted 2; 10 items left" in out
    status, _, err = run(capsys, "index", "delete", idx, "--ids", 0)
    assert status == 2 and err.strip().startswith("error: id(s) [0] are not in index")
    status, out, _ = run(capsys, "index", "add", idx, photos / "p0.png", "--model", model_dir, "--workers", "0")
    assert status == 0 and "indexed 1" in out and "(11 items)" in out
    status, out, _ = run(capsys, "index", "info", idx)
    assert json.loads(out)["count"] == 11 and json.loads(out)["next_id"] == 13


def test_search_errors_are_one_line(capsys, model_dir, photos, tmp_path):
    idx = tmp_path / "i"
    run(capsys, "index", "build", "--model", model_dir, photos / "p1.png", photos / "p2.png", "-o", idx,
        "--workers", "0")
    for argv, message in (
        (["search", idx, "--model", model_dir], "give a query"),
        (["search", idx, "--model", model_dir, "--text", "a", "--weights", "1,2"], "2 weight(s)"),
        (["search", idx, "--model", model_dir, "--text", "a", "--weights", "x"], "--weights must be numbers like"),
        (["search", idx, "--model", model_dir, "--text", "a", "--where", '{"nope": 1}'], "no metadata column 'nope'"),
        (["search", tmp_path / "missing", "--model", model_dir, "--text", "a"], "does not exist"),
        (["search", idx, "--model", model_dir, "--image", photos / "bad.jpg"], "not a readable image"),
    ):
        status, _, err = run(capsys, *argv)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_embed_writes_parquet(capsys, model_dir, data_root, tmp_path):
    import pyarrow.parquet as pq

    recs = sorted((data_root / "fsdd" / "recordings").glob("7_lucas_*.wav"))[:3]
    manifest = tmp_path / "clips.csv"
    manifest.write_text("path,speaker\n" + "".join(f"{r},lucas\n" for r in recs) + "missing.wav,nobody\n")
    out = tmp_path / "vectors.parquet"
    status, text, _ = run(capsys, "embed", "--model", model_dir, "--modality", "audio", manifest, "-o", out,
                          "--workers", "0")
    assert status == 0 and "embedded 3 audio item(s)" in text and "missing.wav" in text
    table = pq.read_table(out)
    assert table.column_names == ["path", "speaker", "embedding"] and table.num_rows == 3
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    expected = binder.load(model_dir).embed(audio=[str(r) for r in recs])["audio"].numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    meta = json.loads(table.schema.metadata[b"binder"])
    assert meta["modality"] == "audio" and meta["dim"] == vectors.shape[1]


def test_console_script_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "binder.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("index", "search", "embed", "serve"):
        assert command in out
