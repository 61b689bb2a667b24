"""Nothing lost in an index: racing writers (real processes), builds onto user files, bounds on
k, ids and filters, and the weaker spots of the CLI (one line each)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import binder
from binder.errors import BinderIndexError, BinderInputError, BinderLockError
from binder.files import exclusive, lock_path
from binder.index import EmbedReport, Index, Item
from binder.index.engines import metadata as store_module
from binder.cli import main

from helpers import write_blobs

HERE = Path(__file__).parent
DIM = 128  # the digits anchor's embedding size


def vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def report(n: int, seed: int = 0) -> EmbedReport:
    return EmbedReport([Item(f"orig-{i}", {"writer": -1}) for i in range(n)], vectors(n, seed), [])


@pytest.fixture
def faiss_index(audio_model, tmp_path) -> Path:
    return Index.from_embeddings(audio_model, report(20), "image", tmp_path / "idx").path


@pytest.fixture
def qdrant_index(audio_model, tmp_path) -> Path:
    pytest.importorskip("qdrant_client")
    index = Index.from_embeddings(audio_model, report(20), "image", tmp_path / "qidx", engine="qdrant")
    index.close()
    return index.path


def racer(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    return subprocess.Popen([sys.executable, str(HERE / "racers.py"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs) -> list:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        out.append((p.returncode, stderr))
    return out


def check_whole(path: Path, expected_writers: dict) -> None:
    """The index opens (digests checked), holds the 20 originals and every racer's items, ids unique."""
    index = Index.open(path)
    rows = index.engine.rows(range(index.manifest["next_id"]))
    assert len(index) == len(rows) == 20 + sum(expected_writers.values())
    writers = [r["writer"] for r in rows.values()]
    assert writers.count(-1) == 20
    for seed, count in expected_writers.items():
        assert writers.count(seed) == count
    assert index.manifest["next_id"] == len(rows)  # ids 0..n-1, none given twice
    index.close()


def ready(go: Path, *seeds: int) -> None:
    """Wait until the racers of ``seeds`` have the index open."""
    deadline = time.monotonic() + 120
    while not all(Path(f"{go}.{s}.ready").exists() for s in seeds):
        assert time.monotonic() < deadline, "the racers did not start"
        time.sleep(0.05)


@pytest.mark.parametrize("engine", ["faiss", "qdrant"])
def test_racing_writers_all_land(engine, request, tmp_path):
    """Three processes add at the same instant: all three land, nothing published is lost (qdrant's
    local mode lets one process at a time open the folder: the others wait for it)."""
    path = request.getfixturevalue(f"{engine}_index")
    go = tmp_path / "go"
    procs = [racer("add", path, 7, seed, go) for seed in (1, 2, 3)]
    ready(go, *((1, 2, 3) if engine == "faiss" else ()))
    go.touch()
    results = finish(procs)
    assert [status for status, _ in results] == [0, 0, 0], results
    check_whole(path, {1: 7, 2: 7, 3: 7})


def test_a_writer_waits_for_the_lock_then_writes_on_top_of_what_was_published(faiss_index, tmp_path):
    """The writer opened generation 0; another write publishes generation 1 under it, and the lock
    is held when it wants to write: it waits (saying so once), re-reads index.json, keeps both."""
    go = tmp_path / "go"
    writer = racer("add", faiss_index, 5, 1, go)
    ready(go, 1)
    Index.open(faiss_index).add_embeddings(EmbedReport([Item("mine", {"writer": 9})], vectors(1, 9), []))
    with exclusive(faiss_index, "index"):
        go.touch()
        time.sleep(2.0)
        assert writer.poll() is None, "the writer must wait while the lock is held"
    (status, err), = finish([writer])
    assert status == 0 and "is being written by process" in err and "waiting for it" in err
    check_whole(faiss_index, {1: 5, 9: 1})


def test_a_writer_gives_up_after_its_wait_with_one_line(faiss_index, capsys):
    with exclusive(faiss_index, "index"):
        start = time.monotonic()
        status = main(["index", "delete", str(faiss_index), "--ids", "0", "--wait", "1"])
        waited = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and 1.0 <= waited < 10
    assert err[-1].startswith("error: index ") and "gave up after waiting 1 s" in err[-1]
    assert len(Index.open(faiss_index)) == 20  # nothing was deleted


def test_deletes_and_adds_race_without_loss(faiss_index, tmp_path):
    go = tmp_path / "go"
    procs = [racer("delete", faiss_index, 3, go), racer("add", faiss_index, 4, 5, go),
             racer("delete", faiss_index, 4, go)]
    ready(go, 5)
    time.sleep(1.0)  # the deleters open the index too
    go.touch()
    assert [s for s, _ in finish(procs)] == [0, 0, 0]
    index = Index.open(faiss_index)
    assert len(index) == 20 - 2 + 4 and not index.engine.rows([3, 4])


@pytest.mark.parametrize("engine", ["faiss", "qdrant"])
def test_a_rebuild_racing_an_add_leaves_a_whole_index(engine, audio_model, tmp_path):
    """A rebuild (overwrite) and an add at once: the add lands in the old index before the rebuild
    replaces it, or in the new one after; either way the index is whole."""
    pytest.importorskip("qdrant_client") if engine == "qdrant" else None
    path = Index.from_embeddings(audio_model, report(20), "image", tmp_path / "idx", engine=engine).path
    model_dir = binder.save(audio_model, tmp_path / "model")
    go = tmp_path / "go"
    procs = [racer("build", path, 10, 7, go, model_dir, engine), racer("add", path, 3, 8, go)]
    ready(go, 7, *((8,) if engine == "faiss" else ()))
    go.touch()
    assert [s for s, _ in finish(procs)] == [0, 0]
    index = Index.open(path)
    writers = sorted(r["writer"] for r in index.engine.rows(range(index.manifest["next_id"])).values())
    assert writers in ([7] * 10, [7] * 10 + [8] * 3), writers  # added before the rebuild, or after it
    index.close()


def test_a_writer_refuses_an_index_rebuilt_with_another_engine(faiss_index, audio_model):
    index = Index.open(faiss_index)
    Index.from_embeddings(audio_model, report(5), "image", faiss_index, engine="qdrant", overwrite=True).close()
    with pytest.raises(BinderIndexError, match="was rebuilt by another process .* nothing was written"):
        index.delete([0])


def test_qdrant_local_mode_refuses_after_its_wait_with_one_line(qdrant_index, tmp_path):
    ready = tmp_path / "ready"
    holder = racer("hold", qdrant_index, 8, ready)
    while not ready.exists():
        time.sleep(0.05)
    second = racer("add", qdrant_index, 3, 4, tmp_path / "go-now", 1)
    (tmp_path / "go-now").touch()
    (status, err), = finish([second])
    lines = err.strip().splitlines()  # the message that it waits, then the error
    assert status == 2 and len(lines) == 2 and "waiting for it" in lines[0] and lines[1].startswith("error: ")
    assert "local Qdrant storage is open in another process" in lines[1] and "url=" in lines[1]
    finish([holder])
    check_whole(qdrant_index, {})


def test_cli_adds_racing_from_the_command_line(audio_model, tmp_path):
    """The issue's reproduction: two `binder index add` at once, from the console script."""
    model_dir = binder.save(audio_model, tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    write_blobs(photos, [f"p{i}.png" for i in range(6)])
    idx = tmp_path / "p.idx"
    assert main(["index", "build", "--model", str(model_dir), str(photos / "p0.png"), "-o", str(idx),
                 "--workers", "0"]) == 0
    cmd = [sys.executable, "-m", "binder.cli", "index", "add", str(idx), "--model", str(model_dir), "--workers", "0"]
    procs = [subprocess.Popen(cmd + [str(photos / f"p{i}.png") for i in part], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for part in ((1, 2), (3, 4, 5))]
    results = finish(procs)
    assert [s for s, _ in results] == [0, 0], results
    index = Index.open(idx)
    assert len(index) == 6 and sorted(Path(r["path"]).name for r in index.engine.rows(range(6)).values()) == \
        [f"p{i}.png" for i in range(6)]


# ----- builds onto what is already there ----------------------------------------------------------

def _user_folder(root: Path) -> Path:
    root.mkdir()
    write_blobs(root, ["a.png", "b.png"])
    (root / "notes.txt").write_text("mine")
    return root


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_build_never_replaces_what_is_not_an_index(audio_model, tmp_path, monkeypatch):
    photos = _user_folder(tmp_path / "photos")
    before = _tree(photos)
    note = tmp_path / "note.txt"
    note.write_text("a file of mine")
    for target, message in ((photos, "is a folder of 3 entries that is not a binder index"),
                            (note, "is a file, not a binder index")):
        with pytest.raises(BinderInputError, match=message):
            Index.build(audio_model, photos, "image", target, num_workers=0, progress=False)
    monkeypatch.chdir(photos)  # "-o ." from inside the folder being indexed
    with pytest.raises(BinderInputError, match="not a binder index"):
        Index.build(audio_model, ".", "image", ".", num_workers=0, progress=False)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BinderInputError, match="symbolic link"):
        Index.build(audio_model, photos, "image", tmp_path / "link", num_workers=0, progress=False)
    assert _tree(photos) == before and note.read_text() == "a file of mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


def test_replacing_an_index_needs_overwrite(audio_model, tmp_path, capsys):
    photos = _user_folder(tmp_path / "photos")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(Index.build(audio_model, photos, "image", empty, num_workers=0, progress=False)) == 2
    with pytest.raises(BinderInputError, match="already exists: pass overwrite=True"):
        Index.build(audio_model, photos / "a.png", "image", empty, num_workers=0, progress=False)
    assert len(Index.open(empty)) == 2
    assert len(Index.build(audio_model, photos / "a.png", "image", empty, num_workers=0, progress=False,
                           overwrite=True)) == 1
    model_dir = binder.save(audio_model, tmp_path / "model")
    argv = ["index", "build", "--model", str(model_dir), str(photos), "-o", str(photos), "--workers", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {str(photos)!r} is a folder of 3 entries") and "\n" not in err
    assert main(argv[:-4] + ["-o", str(empty), "--workers", "0"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(argv[:-4] + ["-o", str(empty), "--workers", "0", "--overwrite"]) == 0
    assert len(Index.open(empty)) == 2


def test_any_later_write_cleans_what_an_interrupted_publish_left(faiss_index):
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    aside = faiss_index.with_name(f".{faiss_index.name}.old-{dead}-x")
    temp = faiss_index.with_name(f".{faiss_index.name}.tmp-{dead}-abc")
    for leftover in (aside, temp):
        leftover.mkdir()
        (leftover / "vectors-0.faiss").write_bytes(b"x")
    Index.open(faiss_index).delete([0])
    assert not aside.exists() and not temp.exists()
    assert lock_path(faiss_index).exists()  # the lock stays beside the folder, not in it
    assert sorted(p.name for p in faiss_index.iterdir()) == ["index.json", "items-1.sqlite", "vectors-1.faiss"]


# ----- bounds ------------------------------------------------------------------------------------

def test_k_is_bounded_before_anything_is_allocated(audio_model, faiss_index):
    index = Index.open(faiss_index, audio_model)
    assert len(index.search(text="a", k=500)) == 20  # capped at the index's size
    for k in (10 ** 9, 2 ** 70, 0, -1, 2.5, True, "3"):
        with pytest.raises(BinderInputError, match="k must be a whole number from 1 to 10000"):
            index.search(text="a", k=k)
    with pytest.raises(BinderInputError, match="k must be a whole number"):
        index.search_embeddings(vectors(1, 0), k=10 ** 12)


def test_ids_out_of_range_are_refused(faiss_index, capsys):
    with pytest.raises(BinderInputError, match=r"out of range: item ids are whole numbers from 0 to 2\^63 - 1"):
        Index.open(faiss_index).delete([2 ** 70])
    assert main(["index", "delete", str(faiss_index), "--ids", str(2 ** 70)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_a_runaway_sql_filter_is_stopped(audio_model, faiss_index, monkeypatch):
    monkeypatch.setattr(store_module, "WHERE_SECONDS", 0.5)
    index = Index.open(faiss_index, audio_model)
    recursive = "id IN (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c)"
    start = time.monotonic()
    with pytest.raises(BinderInputError, match=r"ran for over 0.5 s and was stopped"):
        index.search(text="a", where=recursive)
    assert time.monotonic() - start < 5
    with pytest.raises(BinderInputError, match="not a valid filter"):
        index.search(text="a", where="length(randomblob(100000000)) > 0")  # blobs are capped
    with pytest.raises(BinderInputError, match="not a valid filter"):
        index.search(text="a", where="1); DROP TABLE items; --")
    assert len(index.search(text="a", where="writer = -1 AND id < 5")) == 5


def test_damaged_generation_field_is_named(faiss_index):
    manifest = json.loads((faiss_index / "index.json").read_text())
    for bad in ("../x", -1, 1.5, None):
        (faiss_index / "index.json").write_text(json.dumps({**manifest, "generation": bad}))
        with pytest.raises(BinderIndexError, match="'generation' must be a whole number >= 0"):
            Index.open(faiss_index)


# ----- the CLI's weaker spots ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_setup(audio_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_safety")
    model_dir = binder.save(audio_model, root / "model")
    photos = root / "photos"
    photos.mkdir()
    write_blobs(photos, [f"p{i}.png" for i in range(4)])
    idx = root / "idx"
    assert main(["index", "build", "--model", str(model_dir), str(photos), "-o", str(idx), "--workers", "0"]) == 0
    return model_dir, photos, idx


@pytest.mark.parametrize("argv, message", [
    (["index", "build", "{photos}", "-o", "{new}", "--batch-size", "0"], "batch_size must be a whole number from 1"),
    (["index", "build", "{photos}", "-o", "{new}", "--workers", "-1"], "num_workers must be a whole number from 0"),
    (["index", "add", "{idx}", "{photos}", "--batch-size", "0"], "batch_size must be a whole number from 1"),
    (["embed", "{photos}", "--modality", "image", "-o", "{new}.parquet", "--workers", "-1"], "num_workers"),
    (["search", "{idx}", "--text", "a", "--where", '{"writer": '], "is not valid JSON"),
    (["search", "{idx}", "--text", "a", "--where", "[1, 2]"], "not a valid filter"),
    (["search", "{idx}", "--text", "a", "-k", "1000000000"], "k must be a whole number from 1 to 10000"),
    (["search", "{idx}", "--text", "a", "-k", str(2 ** 70)], "k must be a whole number from 1 to 10000"),
    (["search", "{idx}", "--audio", "{silent}"], "is silent"),
])
def test_cli_bad_input_is_one_line(argv, message, cli_setup, tmp_path, capsys):
    import soundfile as sf

    model_dir, photos, idx = cli_setup
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.float32), 8000)
    names = {"photos": photos, "idx": idx, "new": tmp_path / "new", "silent": silent}
    argv = [a.format(**names) if a.startswith("{") and a.endswith("}") or "{new}" in a else a for a in argv]
    argv += ["--model", str(model_dir)]
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and message in err and "\n" not in err, err


def test_text_folders_index_their_txt_files(audio_model, tmp_path):
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "a.txt").write_text("the digit three\n")
    (notes / "sub" / "b.txt").write_text("a photo of a seven")
    index = Index.build(audio_model, notes, "text", tmp_path / "t", num_workers=0, progress=False)
    rows = index.engine.rows([0, 1])
    assert sorted(r["path"] for r in rows.values()) == ["a photo of a seven", "the digit three"]
    assert {Path(r["file"]).name for r in rows.values()} == {"a.txt", "b.txt"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(BinderInputError, match="holds no .txt files"):
        Index.build(audio_model, tmp_path / "empty", "text", tmp_path / "t2", num_workers=0, progress=False)


def test_silent_queries_are_refused_everywhere_the_same(audio_model, faiss_index):
    index = Index.open(faiss_index, audio_model)
    with pytest.raises(BinderInputError, match="audio input is silent"):
        index.search(audio=(np.zeros(16000, np.float32), 16000))
    with pytest.raises(BinderInputError, match="audio input is silent"):
        audio_model.compose({"audio": (np.zeros(8000, np.int16), 8000), "text": "a"})


def test_lock_waits_are_validated(faiss_index):
    with pytest.raises(BinderInputError, match="wait must be a finite number of seconds >= 0"):
        Index.open(faiss_index).delete([0], wait=float("nan"))
    with pytest.raises(BinderLockError):
        with exclusive(faiss_index, "index"), exclusive(faiss_index, "index", timeout=0):
            pass
