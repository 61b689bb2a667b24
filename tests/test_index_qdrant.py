"""The Qdrant backend of binder.Index, against Qdrant's local mode (the client code path a
cluster uses, in-process): the same API and answers as the FAISS backend."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from binder import BinderIndexError, BinderInputError, BindModel
from binder.cli import main
from binder.index import Index

from helpers import write_blobs

pytest.importorskip("qdrant_client")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("qphotos")
    write_blobs(root, [f"q{i}.png" for i in range(30)], seed=3)
    rows = ["path,n,kind"] + [f"q{i}.png,{i},{'odd' if i % 2 else 'even'}" for i in range(30)]
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root


def test_qdrant_answers_like_faiss(audio_model, photos, tmp_path):
    faiss_idx = Index.build(audio_model, photos / "m.csv", "image", tmp_path / "f", num_workers=0, progress=False)
    q_idx = Index.build(audio_model, photos / "m.csv", "image", tmp_path / "q", engine="qdrant", num_workers=0,
                        progress=False)
    assert q_idx.manifest["engine"] == "qdrant" and len(q_idx) == 30
    assert q_idx.manifest["qdrant"]["collection"] == "q" and q_idx.manifest["qdrant"]["local"] == "qdrant"
    for where in (None, {"kind": "odd"}, {"n": [1, 2, 3, 28]}):
        a = faiss_idx.search(image=str(photos / "q4.png"), text="x", k=5, where=where)
        b = q_idx.search(image=str(photos / "q4.png"), text="x", k=5, where=where)
        assert list(a.ids) == list(b.ids) and [h.metadata for h in a] == [h.metadata for h in b]
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    with pytest.raises(BinderInputError, match="SQL expressions need the faiss engine"):
        q_idx.search(text="x", where="n > 3")


def test_qdrant_updates_reopen_and_model_checks(audio_model, photos, tmp_path):
    idx = Index.build(audio_model, [photos / f"q{i}.png" for i in range(6)], "image", tmp_path / "q", engine="qdrant",
                      num_workers=0, progress=False)
    assert idx.add([photos / "q10.png"], num_workers=0, progress=False).ids == [6]
    assert idx.delete([0, 1]) == 2
    with pytest.raises(BinderInputError, match=r"id\(s\) \[0\] are not in index"):
        idx.delete([0])
    idx.close()
    reopened = Index.open(tmp_path / "q", audio_model)
    assert len(reopened) == 5 and reopened.search(image=str(photos / "q10.png"), k=1)[0].id == 6
    assert json.loads((tmp_path / "q" / "index.json").read_text())["next_id"] == 7
    reopened.close()
    from binder.anchor import OpenClipAnchor

    torch.manual_seed(7)
    with pytest.raises(BinderInputError, match="built with another model"):
        Index.open(tmp_path / "q", BindModel(OpenClipAnchor(model="binder-digits"), {}))
    # Rebuilding in place swaps the alias to a new collection; the old one is dropped.
    again = Index.build(audio_model, [photos / "q3.png"], "image", tmp_path / "q", engine="qdrant", num_workers=0,
                        progress=False, overwrite=True)
    assert len(again) == 1
    again.close()
    shutil.rmtree(tmp_path / "q" / "qdrant")
    with pytest.raises(BinderIndexError, match="local qdrant folder is missing"):
        Index.open(tmp_path / "q")


def test_qdrant_from_the_command_line(audio_model, photos, tmp_path, capsys):
    import binder

    model_dir = binder.save(audio_model, tmp_path / "model")
    assert main(["index", "build", "--model", str(model_dir), "--engine", "qdrant", "--collection", "photos",
                 str(photos / "m.csv"), "-o", str(tmp_path / "cli.idx"), "--workers", "0"]) == 0
    assert "indexed 30" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "cli.idx"), "--model", str(model_dir), "--image", str(photos / "q9.png"),
                 "--where", '{"kind": "odd"}', "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["path"].endswith("q9.png") and {h["metadata"]["kind"] for h in hits} == {"odd"}


def test_an_add_is_one_step_for_readers_and_a_killed_one_leaves_nothing_visible(audio_model, photos, tmp_path,
                                                                               monkeypatch):
    """Points of an add sit above the published next_id, invisible, until index.json moves it;
    a write that dies before that leaves them invisible, and the next write removes them."""
    from binder.index.engines.qdrant import QdrantEngine

    idx = Index.build(audio_model, [photos / f"q{i}.png" for i in range(4)], "image", tmp_path / "q", engine="qdrant",
                      num_workers=0, progress=False)
    query = str(photos / "q20.png")

    def dies(self, kind):
        raise KeyboardInterrupt  # killed after the points were written, before index.json

    monkeypatch.setattr(QdrantEngine, "finish", dies)
    with pytest.raises(KeyboardInterrupt):
        idx.add([photos / "q20.png", photos / "q21.png"], num_workers=0, progress=False)
    monkeypatch.undo()
    assert len(idx) == 4 and 4 not in idx.search(image=query, k=10).ids  # the orphans are not visible
    assert idx.engine.client.count(idx.engine.alias, exact=True).count == 6  # ... though they are stored
    assert idx.add([photos / "q22.png"], num_workers=0, progress=False).ids == [4]
    assert idx.engine.client.count(idx.engine.alias, exact=True).count == 5  # the next write removed them
    assert len(idx) == 5 and idx.get(4).path.endswith("q22.png")
    idx.close()
