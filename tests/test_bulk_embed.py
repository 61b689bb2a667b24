"""`binder embed` into a folder of parts: the same vectors as one file, crash-safe, resumable,
split over ranks, and a folder of another job refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from binder.errors import BinderInputError
from binder.index.bulk import embed_parts
from binder.index.items import embed_items, gather
from helpers import chirp

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for i in range(11):
        sf.write(folder / f"c{i:02d}.wav", chirp(seconds=0.6, seed=i), 16000)
    (folder / "c99.wav").write_bytes(b"not audio")
    return folder


def _vectors(folder: Path) -> dict:
    out = {}
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part)
        for path, vec in zip(table["path"].to_pylist(), table["embedding"].to_pylist()):
            out[Path(path).name] = np.asarray(vec, dtype=np.float32)
    return out


def test_parts_hold_the_vectors_of_one_pass(audio_model, clips, tmp_path):
    items = gather([clips], "audio")
    done = embed_parts(audio_model, "audio", items, tmp_path / "out", part_size=4, num_workers=0,
                       show_progress=False)
    assert (done["parts"], done["embedded"], done["skipped"]) == (3, 11, 1)
    summary = json.loads((tmp_path / "out" / "embeddings.json").read_text())
    assert summary["files"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    whole = embed_items(audio_model, "audio", items, num_workers=0, show_progress=False)
    parts = _vectors(tmp_path / "out")
    for item, vec in zip(whole.items, whole.vectors):
        assert np.allclose(parts[Path(item.path).name], vec, atol=1e-6)


def test_a_rerun_skips_finished_parts_and_another_job_is_refused(audio_model, clips, tmp_path, monkeypatch):
    import binder.index.bulk as bulk

    items = gather([clips], "audio")
    embed_parts(audio_model, "audio", items, tmp_path / "out", part_size=4, num_workers=0, show_progress=False)
    (tmp_path / "out" / "part-00001.parquet").unlink()  # as if killed while embedding it
    seen = []
    real = bulk.embed_items
    monkeypatch.setattr(bulk, "embed_items", lambda m, mod, its, *a, **k: seen.append(len(its)) or real(m, mod, its,
                                                                                                        *a, **k))
    done = embed_parts(audio_model, "audio", items, tmp_path / "out", part_size=4, num_workers=0, show_progress=False)
    assert seen == [4] and done["embedded"] == 11
    with pytest.raises(BinderInputError, match="holds another job \\(part_size differ\\)"):
        embed_parts(audio_model, "audio", items, tmp_path / "out", part_size=5, num_workers=0, show_progress=False)
    with pytest.raises(BinderInputError, match="holds another job \\(.*items"):
        embed_parts(audio_model, "audio", items[:-1], tmp_path / "out", part_size=4, num_workers=0,
                    show_progress=False)


def test_ranks_take_their_own_parts(audio_model, clips, tmp_path, monkeypatch):
    items = gather([clips], "audio")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    mine = embed_parts(audio_model, "audio", items, tmp_path / "out", part_size=4, num_workers=0, show_progress=False)
    assert mine == {"rank": 1, "embedded": 4}
    assert [p.name for p in sorted((tmp_path / "out").glob("part-*.parquet"))] == ["part-00001.parquet"]
    monkeypatch.setenv("RANK", "0")
    done = embed_parts(audio_model, "audio", items, tmp_path / "out", part_size=4, num_workers=0, show_progress=False)
    assert done["embedded"] == 11


def test_the_cli_writes_a_folder_of_parts(audio_model, clips, tmp_path):
    model_dir = audio_model.save_pretrained(tmp_path / "model") if hasattr(audio_model, "save_pretrained") else None
    if model_dir is None:
        from binder.io import save

        model_dir = save(audio_model, tmp_path / "model")
    out = subprocess.run([sys.executable, "-m", "binder.cli", "embed", str(clips), "--model", str(model_dir),
                          "--modality", "audio", "-o", str(tmp_path / "vectors"), "--part-size", "5", "--workers",
                          "0"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "embedded 11 of 12 audio item(s) in 3 part(s)" in out.stdout and "skipped" in out.stdout
