"""The compressed faiss index (``ivf_sq8``): 8-bit codes in memory, exact re-ranking from disk,
its search settings tuned at build time, its files checked like every index file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from binder import BinderIndexError, BinderInputError
from binder.index import Index
from binder.index.engines import quantized
from binder.index.engines import vectors as engine_module
from binder.index.items import EmbedReport, Item


@pytest.fixture(scope="module")
def model(audio_model):
    return audio_model


def _low_rank(model, n: int, seed: int = 0, rank: int = 12) -> EmbedReport:
    """``n`` unit vectors near a ``rank``-dimensional subspace, in clusters of uneven sizes."""
    rng = np.random.default_rng(seed)
    dim = model.anchor.embed_dim
    basis = np.random.default_rng(0).normal(size=(rank, dim))
    centres = np.random.default_rng(1).normal(size=(30, rank))
    sizes = 1.0 / np.arange(1, 31)
    which = rng.choice(30, size=n, p=sizes / sizes.sum())
    vectors = (centres[which] + 0.4 * rng.normal(size=(n, rank))) @ basis + 0.05 * rng.normal(size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return EmbedReport([Item(f"q{seed}-{i}", {"bucket": i % 7}) for i in range(n)], vectors, [])


def _recall(idx, queries, vectors, k=10):
    hits = idx.search_embeddings(queries, k=k)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    return np.mean([len(set(h.ids) & set(e)) / k for h, e in zip(hits, exact)])


def test_auto_compresses_large_indexes_and_searches_exactly(model, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "ANN_FROM", 1000)  # auto -> ivf_sq8 at this size
    report = _low_rank(model, 4000)
    idx = Index.from_embeddings(model, report, "image", tmp_path / "q")
    m, vec = idx.manifest, idx.engine.vectors
    assert m["kind"] == "ivf_sq8" and sorted(m["files"]) == ["items-0.sqlite", "vectors-0.faiss", "vectors-0.rows"]
    assert m["search_breadth"] == vec.breadth and m["rerank"] == vec.rerank
    assert min(m["ann_recall_at_10"], m["ann_recall_items_at_10"]) >= 0.95
    assert vec.code_dims < model.anchor.embed_dim  # a low-rank collection is projected
    assert vec.memory_bytes() <= 0.3 * len(vec) * model.anchor.embed_dim * 4
    rng = np.random.default_rng(5)
    a, b = rng.integers(4000, size=(2, 100))
    mid = report.vectors[a] + report.vectors[b]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    assert _recall(idx, mid, report.vectors) >= 0.9 and _recall(idx, report.vectors[:100], report.vectors) >= 0.9
    hits = idx.search_embeddings(report.vectors[:3], k=5)
    for q, h in zip(report.vectors[:3], hits):  # exact scores of the re-ranked hits, best first
        assert np.allclose(h.scores, report.vectors[list(h.ids)] @ q, atol=1e-5) and list(h.scores) == sorted(
            h.scores, reverse=True)
    with pytest.raises(BinderInputError, match=r"queries must be \(N, 128\)"):  # another size: refused
        idx.search_embeddings(np.zeros((2, 64), dtype=np.float32), k=3)


def test_updates_filters_and_reopening(model, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "ANN_FROM", 1000)
    report = _low_rank(model, 3000)
    idx = Index.from_embeddings(model, report, "image", tmp_path / "q")
    idx.delete(list(range(0, 3000, 50)))
    found = np.concatenate([h.ids for h in idx.search_embeddings(report.vectors[:200:10], k=10)])
    assert len(idx) == 2940 and not set(found) & set(range(0, 3000, 50))
    filtered = idx.search_embeddings(report.vectors[:5], k=10, where={"bucket": 3})
    assert all(h.metadata["bucket"] == 3 for hs in filtered for h in hs) and all(len(hs) == 10 for hs in filtered)
    monkeypatch.setattr(engine_module, "EXACT_SUBSET", 100)  # the same filter through the lists
    monkeypatch.setattr(quantized, "EXACT_SUBSET", 100)
    assert [set(h.ids) for h in idx.search_embeddings(report.vectors[:5], k=10, where={"bucket": 3})] == \
        [set(h.ids) for h in filtered]
    reopened = Index.open(idx.path, model)
    assert reopened.engine.vectors.rerank == idx.manifest["rerank"] and len(reopened) == 2940
    more = _low_rank(model, 9000, seed=1)  # four times the size: new lists, tuned again
    reopened.add_embeddings(more)
    assert len(reopened) == 11940 and reopened.manifest["kind"] == "ivf_sq8"
    assert reopened.search_embeddings(more.vectors[7], k=1)[0].ids[0] == 3000 + 7
    assert sorted(p.name for p in reopened.path.iterdir()) == ["index.json", "items-2.sqlite", "vectors-2.faiss",
                                                               "vectors-2.rows"]


def test_damaged_rows_are_refused(model, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "ANN_FROM", 1000)
    idx = Index.from_embeddings(model, _low_rank(model, 1500), "image", tmp_path / "q")
    idx.close()
    rows = tmp_path / "q" / "vectors-0.rows"
    data = bytearray(rows.read_bytes())
    data[-7] ^= 0xFF  # one float changed
    rows.write_bytes(bytes(data))
    with pytest.raises(BinderIndexError, match="vectors-0.rows does not match its recorded SHA-256"):
        Index.open(tmp_path / "q", model)
    rows.write_bytes(bytes(data[:-4096]))  # truncated
    with pytest.raises(BinderIndexError, match="vectors-0.rows has .* bytes, index.json says"):
        Index.open(tmp_path / "q", model, verify=False)
    rows.unlink()
    with pytest.raises(BinderIndexError, match="vectors-0.rows is missing"):
        Index.open(tmp_path / "q", model)
    manifest = json.loads((tmp_path / "q" / "index.json").read_text())
    assert manifest["kind"] == "ivf_sq8"
