"""binder.Index: building from files/folders/manifests, search, filters, updates, integrity."""
from __future__ import annotations

import csv
import pickle
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import binder
from binder import BinderIndexError, BinderInputError, BindModel
from binder.index import Index
from binder.index.engines import vectors as engine_module

from helpers import blob_image


def pattern_image(seed: int) -> Image.Image:
    """A distinct 28 x 56 test image per seed."""
    return blob_image(np.random.default_rng(seed))


@pytest.fixture(scope="module")
def model(audio_model):
    return audio_model


@pytest.fixture(scope="module")
def other_model(random_anchor):
    """Same anchor, another (random) audio encoder."""
    torch.manual_seed(2)
    return BindModel(random_anchor, {"audio": {}}).eval()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """40 images in two folders, a CSV manifest with metadata, and one corrupt file."""
    root = tmp_path_factory.mktemp("gallery")
    rows = []
    for i in range(40):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(exist_ok=True)
        pattern_image(i).save(folder / f"img{i:02d}.png")
        rows.append({"path": f"{folder.name}/img{i:02d}.png", "n": i, "kind": folder.name, "weight": i / 10})
    (root / "dogs" / "broken.png").write_bytes(b"not a png")
    (root / "dogs" / "notes.txt").write_text("not an image, not indexed from a folder")
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "n", "kind", "weight"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def index(model, gallery, tmp_path) -> Index:
    return Index.build(model, gallery / "manifest.csv", modality="image", path=tmp_path / "idx", num_workers=0,
                       progress=False)


def test_build_from_manifest_keeps_metadata_and_searches_exactly(index, model, gallery):
    assert len(index) == 40 and index.report.indexed == 40 and not index.report.skipped
    assert index.manifest["kind"] == "flat" and index.dim == model.anchor.embed_dim
    hits = index.search(image=str(gallery / "cats" / "img07.png"), k=5)
    assert hits[0].path == str(gallery / "cats" / "img07.png") and hits[0].metadata == {"n": 7, "kind": "cats",
                                                                                         "weight": 0.7}
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    hit_id, score, path, metadata = hits[0]  # a hit unpacks, pickles and prints
    assert (hit_id, path) == (hits[0].id, hits[0].path) and pickle.loads(pickle.dumps(hits)) == hits
    assert repr(hits[0]).startswith(f"Hit(id={hit_id}, score=")
    assert list(hits.scores) == sorted(hits.scores, reverse=True) and len(set(hits.ids)) == 5
    # Exact search: the same ranking as brute force over every embedding.
    q = model.embed(image=[str(gallery / "cats" / "img07.png")])["image"]
    everything = model.embed(image=[str(gallery / r) for r in _manifest_paths(gallery)])["image"]
    order = (everything @ q[0]).argsort(descending=True)[:5].numpy()
    assert list(hits.ids) == list(order)



def test_search_rows_from_memory_equal_the_sqlite_lookup(index, model, gallery, monkeypatch):
    """A read-only generation answers result rows from columns held in memory; the same ids give
    the same (path, metadata) as SQLite, missing ids are left out, and a new generation is read anew."""
    import binder.index.engines.metadata as store

    ids = np.array([39, 3, 3, 12345, -1, 0])
    cached = index.engine.store.hit_rows(ids)
    assert index.engine.store._cache is not None and sorted(cached) == [0, 3, 39]
    monkeypatch.setattr(store, "CACHE_ROWS", 0)
    fresh = Index.open(index.path, model)
    assert fresh.engine.store.hit_rows(ids) == cached and fresh.engine.store._cache is None
    assert cached[3] == (str(gallery / "cats" / "img03.png"), {"n": 3, "kind": "cats", "weight": 0.3})
    monkeypatch.undo()
    index.delete([3])
    assert 3 not in index.engine.store.hit_rows(ids) and 3 not in index.search(image=pattern_image(3), k=40).ids

def _manifest_paths(gallery: Path):
    with open(gallery / "manifest.csv") as f:
        return [row["path"] for row in csv.DictReader(f)]


def test_build_from_folder_reports_unreadable_files(model, gallery, tmp_path):
    idx = Index.build(model, gallery, modality="image", path=tmp_path / "f", num_workers=2, progress=False)
    assert idx.report.indexed == 40 and len(idx) == 40
    assert [Path(p).name for p, _ in idx.report.skipped] == ["broken.png"]
    assert "not a readable image" in idx.report.skipped[0][1]
    assert {h.metadata["folder"] for h in idx.search(text="a photo", k=40)} == {"cats", "dogs"}


def test_workers_embed_exactly_like_the_main_process(model, gallery):
    from binder.index.items import embed_items, gather

    items = gather(gallery, "image")
    a = embed_items(model, "image", items, batch_size=7, num_workers=0, show_progress=False)
    b = embed_items(model, "image", items, batch_size=7, num_workers=2, show_progress=False)
    assert [i.path for i in a.items] == [i.path for i in b.items]
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
    assert a.skipped == b.skipped and len(a.skipped) == 1


def test_where_filters(index, gallery):
    query = {"image": str(gallery / "cats" / "img07.png"), "k": 40}
    assert {h.metadata["kind"] for h in index.search(**query, where={"kind": "dogs"})} == {"dogs"}
    assert {h.metadata["n"] for h in index.search(**query, where={"n": [3, 4, 99]})} == {3, 4}
    assert {h.metadata["n"] for h in index.search(**query, where="n >= 30 AND weight < 3.5")} == {30, 31, 32, 33, 34}
    assert index.search(**query, where={"kind": "birds"}) == []
    with pytest.raises(BinderInputError, match="no metadata column 'colour'.*'kind'"):
        index.search(**query, where={"colour": "red"})
    with pytest.raises(BinderInputError, match="not a valid filter"):
        index.search(**query, where="n >>= 3")
    with pytest.raises(BinderInputError, match="not a valid filter"):  # filters only read
        index.search(**query, where="1); DELETE FROM items; SELECT (1")
    assert len(index) == 40


def test_add_and_delete_persist(index, model, gallery, tmp_path):
    extra = tmp_path / "extra.png"
    pattern_image(1000).save(extra)
    report = index.add([extra], num_workers=0, progress=False)
    assert report.indexed == 1 and report.ids == [40] and len(index) == 41
    assert index.search(image=str(extra), k=1)[0].id == 40
    assert index.delete([40, 7]) == 2
    assert 7 not in index.search(image=str(gallery / "cats" / "img07.png"), k=40).ids
    with pytest.raises(BinderInputError, match=r"id\(s\) \[7, 12345\] are not in index.*nothing was deleted"):
        index.delete([7, 12345, 3])
    reopened = Index.open(index.path, model)
    assert len(reopened) == 39 and 3 in reopened.search(text="x", k=39).ids
    assert sorted(p.name for p in index.path.iterdir()) == ["index.json", "items-2.sqlite", "vectors-2.faiss"]
    with pytest.raises(BinderInputError, match="no ids"):
        index.delete([])


def test_queries_from_another_model_are_refused(index, model, other_model, gallery):
    assert Index.open(index.path, model).search(text="x", k=1)  # the same model: fine
    audio_index = Index.build(model, [str(p) for p in sorted((gallery / "cats").glob("*.png"))][:3], "image",
                              index.path.parent / "again", num_workers=0, progress=False)
    assert len(audio_index) == 3
    # Another anchor: a different space altogether.
    from binder.anchor import OpenClipAnchor

    torch.manual_seed(5)
    stranger = BindModel(OpenClipAnchor(model="binder-digits"), {})
    with pytest.raises(BinderInputError, match="built with another model"):
        Index.open(index.path, stranger)


def test_index_of_a_bound_modality_checks_that_encoder(model, other_model, data_root, tmp_path):
    recs = sorted((data_root / "fsdd" / "recordings").glob("3_jackson_*.wav"))[:4]
    idx = Index.build(model, recs, modality="audio", path=tmp_path / "a", num_workers=0, progress=False)
    assert idx.search(audio=str(recs[2]), k=1)[0].path == str(recs[2])
    with pytest.raises(BinderInputError, match="built with another model"):
        idx.attach(other_model)  # same anchor, another audio encoder: not comparable


def test_damaged_indexes_are_clear_errors(index, model):
    path = index.path
    vec = next(path.glob("vectors-*.faiss"))
    backup = vec.read_bytes()
    vec.write_bytes(backup[: len(backup) // 2])
    with pytest.raises(BinderIndexError, match="damaged or half-written.*bytes, index.json says"):
        Index.open(path, model)
    vec.write_bytes(bytes(len(backup)))  # right size, wrong content
    with pytest.raises(BinderIndexError, match="does not match its recorded SHA-256"):
        Index.open(path, model)
    with pytest.raises(BinderIndexError, match="not a readable FAISS index"):
        Index.open(path, model, verify=False)
    vec.write_bytes(backup)
    (path / "index.json").write_text("{not json")
    with pytest.raises(BinderIndexError, match="damaged: not valid JSON"):
        Index.open(path)
    (path / "index.json").unlink()
    with pytest.raises(BinderIndexError, match="not a binder index"):
        Index.open(path)
    with pytest.raises(BinderInputError, match="does not exist"):
        Index.open(path.parent / "nowhere")


def test_interrupted_writes_leave_the_index_intact(index, model, gallery, monkeypatch, tmp_path):
    before = json.loads((index.path / "index.json").read_text())

    def boom(self, path):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_module.VectorIndex, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        index.delete([1])
    with pytest.raises(KeyboardInterrupt):  # a rebuild dies half-way: the old index stays
        Index.build(model, gallery / "manifest.csv", "image", index.path, num_workers=0, progress=False,
                    overwrite=True)
    monkeypatch.undo()
    assert json.loads((index.path / "index.json").read_text()) == before
    assert len(index) == 40 and 1 in index.search(text="x", k=40).ids
    assert len(Index.open(index.path, model)) == 40
    index.delete([2])  # the next write cleans the leftovers
    assert sorted(p.name for p in index.path.iterdir()) == ["index.json", "items-1.sqlite", "vectors-1.faiss"]


def _clustered(model, n: int, seed: int = 0):
    """``n`` unit vectors around 20 centres, as embedded items with a ``bucket`` column."""
    from binder.index.items import EmbedReport, Item

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(20, model.anchor.embed_dim))
    vectors = centres[rng.integers(20, size=n)] + 0.3 * rng.normal(size=(n, model.anchor.embed_dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return EmbedReport([Item(f"v{seed}-{i}", {"bucket": i % 7}) for i in range(n)], vectors, [])


def _recall(idx, queries, vectors):
    hits = idx.search_embeddings(queries, k=10)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    return np.mean([len(set(h.ids) & set(e)) / 10 for h, e in zip(hits, exact)])


def test_ivf_tuned_updated_and_retrained(model, tmp_path, monkeypatch):
    report = _clustered(model, 3000)
    idx = Index.from_embeddings(model, report, "image", tmp_path / "i", kind="ivf")
    engine = idx.engine.vectors
    assert idx.manifest["kind"] == "ivf" and engine.index.nlist == 60  # 3000 / 50 training vectors per list
    assert idx.manifest["search_breadth"] == engine.breadth and idx.manifest["ann_recall_at_10"] >= 0.95
    assert _recall(idx, report.vectors[:50], report.vectors) >= 0.95
    idx.delete(list(range(0, 3000, 50)))  # removed from the lists at once
    assert len(idx.engine.vectors) == idx.engine.vectors.index.ntotal == 2940 and not len(idx.engine.vectors.tombstones)
    found = np.concatenate([h.ids for h in idx.search_embeddings(report.vectors[:200:10], k=10)])
    assert not set(found) & set(range(0, 3000, 50))
    filtered = idx.search_embeddings(report.vectors[:5], k=10, where={"bucket": 3})
    assert all(h.metadata["bucket"] == 3 for hs in filtered for h in hs) and all(len(hs) == 10 for hs in filtered)
    monkeypatch.setattr(engine_module, "EXACT_SUBSET", 100)  # the same filter through the IVF selector
    assert [list(h.ids) for h in idx.search_embeddings(report.vectors[:5], k=10, where={"bucket": 3})] == \
        [list(h.ids) for h in filtered]
    reopened = Index.open(idx.path, model)
    assert reopened.engine.vectors.breadth == idx.manifest["search_breadth"] and len(reopened) == 2940
    more = _clustered(model, 9000, seed=1)  # four times the size: new lists, tuned again
    reopened.add_embeddings(more)
    assert reopened.engine.vectors.index.nlist == 11940 // 50 and len(reopened) == 11940
    assert reopened.manifest["search_breadth"] == reopened.engine.vectors.breadth
    assert reopened.search_embeddings(more.vectors[7], k=1)[0].ids[0] == 3000 + 7


def test_hnsw_tombstones_filters_and_recall(model, tmp_path):
    report = _clustered(model, 3000)
    idx = Index.from_embeddings(model, report, "image", tmp_path / "h", kind="hnsw")
    assert idx.manifest["kind"] == "hnsw" and idx.manifest["ann_recall_at_10"] >= 0.95
    assert idx.manifest["search_breadth"] in engine_module.BREADTHS["hnsw"]
    assert _recall(idx, report.vectors[:50], report.vectors) >= 0.9
    idx.delete(list(range(0, 3000, 50)))  # 60 tombstones, 2%: no rebuild yet
    assert idx.engine.vectors.kind == "hnsw" and len(idx.engine.vectors.tombstones) == 60
    found = np.concatenate([h.ids for h in idx.search_embeddings(report.vectors[:200:10], k=10)])
    assert not set(found) & set(range(0, 3000, 50))
    filtered = idx.search_embeddings(report.vectors[:5], k=10, where={"bucket": 3})
    assert all(h.metadata["bucket"] == 3 for hs in filtered for h in hs) and all(len(hs) == 10 for hs in filtered)
    reopened = Index.open(idx.path, model)
    assert len(reopened) == 2940 and len(reopened.engine.vectors.tombstones) == 60
    # over a tenth: the graph is rebuilt without them
    reopened.delete(sorted(set(range(1, 1000, 3)) - set(range(0, 3000, 50))))
    assert len(reopened.engine.vectors.tombstones) == 0 and reopened.engine.vectors.index.ntotal == len(reopened)


def test_search_arguments_are_checked(index):
    with pytest.raises(BinderInputError, match="needs a query"):
        index.search(k=3)
    with pytest.raises(BinderInputError, match="1 weight"):
        index.search(text="x", image=pattern_image(1), weights=[1.0])
    with pytest.raises(BinderInputError, match="k must be a whole number from 1 to"):
        index.search(text="x", k=0)
    with pytest.raises(BinderInputError, match="no thermal encoder"):
        index.search(thermal=np.zeros((8, 8)), k=3)
    with pytest.raises(BinderInputError, match=r"queries must be \(N, "):
        index.search_embeddings(np.zeros(3), k=3)


def test_nothing_to_index_is_an_error(model, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BinderInputError, match="nothing to index"):
        Index.build(model, tmp_path / "empty", "image", tmp_path / "i", progress=False)
    (tmp_path / "bad.png").write_bytes(b"x")
    with pytest.raises(BinderInputError, match="no image item could be read"):
        Index.build(model, [tmp_path / "bad.png"], "image", tmp_path / "i", num_workers=0, progress=False)
    assert not (tmp_path / "i").exists()
    with pytest.raises(BinderInputError, match="does not exist"):
        Index.build(model, tmp_path / "nope", "image", tmp_path / "i", progress=False)


def test_jsonl_manifest_and_text_index(model, gallery, tmp_path):
    lines = [json.dumps({"path": str(gallery / "dogs" / "img00.png"), "tag": "a"}), "",
             json.dumps({"path": "dogs/img02.png", "tag": "b"})]
    (gallery / "m.jsonl").write_text("\n".join(lines))
    idx = Index.build(model, gallery / "m.jsonl", "image", tmp_path / "j", num_workers=0, progress=False)
    assert sorted(h.metadata["tag"] for h in idx.search(text="x", k=5)) == ["a", "b"]
    texts = Index.build(model, ["a red dog", "a blue cat", "three"], "text", tmp_path / "t", num_workers=0,
                        progress=False)
    assert texts.search(text="a blue cat", k=1)[0].path == "a blue cat"
    (tmp_path / "bad.jsonl").write_text('{"path": "x.png"}\n[1, 2]\n')
    with pytest.raises(BinderInputError, match="line 2 must be a JSON object"):
        Index.build(model, tmp_path / "bad.jsonl", "image", tmp_path / "k", progress=False)


def test_model_saved_and_loaded_keeps_its_fingerprints(model, index, tmp_path):
    path = binder.save(model, tmp_path / "m")
    loaded = binder.load(path)
    assert loaded.fingerprint("audio") == model.fingerprint("audio")
    assert Index.open(index.path, loaded).search(text="x", k=1)
    shutil.rmtree(path)


def test_an_index_of_another_embedding_size_is_refused(model, tmp_path, monkeypatch):
    from binder.index.items import EmbedReport, Item

    other = BindModel(model.anchor, {})
    monkeypatch.setattr(other.anchor, "embed_dim", 64)  # a model whose space has 64 dimensions
    vectors = np.eye(64, dtype=np.float32)[:5]
    Index.from_embeddings(other, EmbedReport([Item(f"v{i}") for i in range(5)], vectors, []), "image", tmp_path / "s")
    monkeypatch.undo()
    with pytest.raises(BinderInputError, match="holds 64-d embeddings; this model makes 128-d ones"):
        Index.open(tmp_path / "s", model)
    idx = Index.open(tmp_path / "s")  # without a model: inspect, delete, search by vectors
    assert len(idx) == 5 and idx.search_embeddings(vectors[2], k=1)[0][0].path == "v2"
    with pytest.raises(BinderInputError, match="no model to embed queries"):
        idx.search(text="x")
