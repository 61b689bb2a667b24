"""Embedding arithmetic: compose(), its calibration, and the arithmetic benchmark's pieces."""
from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import binder
from binder import BinderInputError, BindModel, NoDefaultModelError
from binder.arithmetic import check_weights, compose_embeddings, effective_weights, measure_spread
from binder.datasets.composites import PAIRS, composite_gallery, label_digits, pair_label, side_by_side


@pytest.fixture(scope="module")
def model(random_anchor):
    torch.manual_seed(1)
    return BindModel(random_anchor, {"audio": {}}).eval()


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_compose_is_the_weighted_normalised_sum():
    a, b = unit(4, 16, seed=1), unit(4, 16, seed=2) * 3  # b not unit: compose normalises it
    spreads = {"image": 0.2, "audio": 0.1}
    out = compose_embeddings({"image": a, "audio": b}, [0.25, 0.75], spreads)
    wa, wb = 0.25 / 0.2, 0.75 / 0.1
    expected = F.normalize(wa / (wa + wb) * a + wb / (wa + wb) * F.normalize(b, dim=-1), dim=-1)
    torch.testing.assert_close(out, expected)
    assert torch.allclose(out.norm(dim=-1), torch.ones(4))
    # Uncalibrated equal weights: ImageBind's plain sum of unit vectors.
    torch.testing.assert_close(compose_embeddings({"image": a, "audio": b}),
                               F.normalize(a + F.normalize(b, dim=-1), dim=-1))
    # One row broadcasts over the other modality's rows.
    one = compose_embeddings({"image": a[0], "audio": b}, {"audio": 1, "image": 1})
    torch.testing.assert_close(one[2], compose_embeddings({"image": a[0:1], "audio": b[2:3]})[0])


@pytest.mark.parametrize("weights, message", [
    ([1.0], r"1 weight\(s\) \[1.0\] for 2 query modalities"),
    ({"image": 1, "text": 1}, "weights are given for"),
    ([1.0, -0.5], "must be a finite number >= 0"),
    ([1.0, float("nan")], "must be a finite number >= 0"),
    ([0, 0], "all zero"),
    ("0.5,0.5", "list of numbers or a dict"),
    ([True, 1], "must be a finite number"),
])
def test_bad_weights_are_clear_errors(weights, message):
    with pytest.raises(BinderInputError, match=message):
        compose_embeddings({"image": unit(2, 8), "audio": unit(2, 8, seed=3)}, weights)


def test_bad_queries_are_clear_errors(model):
    with pytest.raises(BinderInputError, match="empty query"):
        compose_embeddings({})
    with pytest.raises(BinderInputError, match="different numbers of inputs"):
        compose_embeddings({"image": unit(2, 8), "audio": unit(3, 8)})
    with pytest.raises(BinderInputError, match="different sizes"):
        compose_embeddings({"image": unit(2, 8), "audio": unit(2, 9)})
    with pytest.raises(BinderInputError, match="all-zero row"):
        compose_embeddings({"image": torch.zeros(1, 8)})
    with pytest.raises(BinderInputError, match="NaN"):
        compose_embeddings({"image": torch.full((1, 8), float("nan"))})
    with pytest.raises(BinderInputError, match="needs a query"):
        model.compose({})
    with pytest.raises(BinderInputError, match="no thermal encoder"):
        model.compose({"image": np.zeros((28, 28), np.uint8), "thermal": np.zeros((8, 8))})
    with pytest.raises(BinderInputError, match="1 weight"):  # checked before anything is embedded
        model.compose({"image": np.zeros((28, 28), np.uint8), "text": "x"}, weights=[1])


def test_model_compose_on_raw_inputs_and_the_default_model(model, monkeypatch):
    img = np.random.default_rng(0).integers(0, 255, (28, 56), dtype=np.uint8)
    wav = (np.sin(np.linspace(0, 800, 16000)).astype(np.float32), 16000)
    q = model.compose({"image": img, "audio": wav}, weights=[0.3, 0.7])
    assert q.shape == (1, model.anchor.embed_dim) and torch.allclose(q.norm(dim=-1), torch.ones(1))
    z = model.embed(image=img, audio=wav)
    torch.testing.assert_close(q, compose_embeddings(z, [0.3, 0.7], model.query_spreads))
    monkeypatch.setattr(importlib.import_module("binder.api"), "_default_model", None)
    with pytest.raises(NoDefaultModelError, match="binder.use"):
        binder.compose({"text": "three"})
    binder.use(model)
    torch.testing.assert_close(binder.compose({"text": ["a", "b"]}), model.embed(text=["a", "b"])["text"])


def test_calibration_balances_modalities_and_is_saved(model, tmp_path):
    d = model.anchor.embed_dim  # images cluster around 5 centres in a 10-d subspace, like real embeddings
    centres = F.pad(unit(5, 10, seed=4), (0, d - 10))
    gallery = F.normalize(centres[torch.arange(300) % 5] + 0.2 * F.pad(unit(300, 10, seed=5), (0, d - 10)), dim=-1)
    wide = gallery[:50]  # image queries: as close to the gallery as it gets
    narrow = F.normalize(0.3 * gallery[50:100] + F.pad(unit(50, d - 10, seed=6), (10, 0)), dim=-1)  # mostly elsewhere
    spreads = model.calibrate_embeddings(gallery, {"image": wide, "audio": narrow})
    assert spreads["image"] > 2 * spreads["audio"] and model.query_spreads == spreads
    assert measure_spread(wide, gallery) == pytest.approx(spreads["image"])
    # Equal contributions: each modality moves the composed scores by the same amount.
    mult = effective_weights(check_weights(None, ["image", "audio"]), spreads)
    moved_image = (mult["image"] * wide @ gallery.T).std(dim=1).mean()
    moved_audio = (mult["audio"] * narrow @ gallery.T).std(dim=1).mean()
    assert float(moved_image / moved_audio) == pytest.approx(1.0, rel=1e-4)
    loaded = binder.load(binder.save(model, tmp_path / "m"))
    assert loaded.query_spreads == pytest.approx(spreads)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["query_spreads"] == pytest.approx(spreads)
    with pytest.raises(BinderInputError, match="calibration needs"):
        measure_spread(wide, gallery[:1])


def test_composites_and_gallery():
    table = label_digits()
    assert table.shape == (65, 10) and table[pair_label(7, 3)].nonzero().flatten().tolist() == [3, 7]
    assert pair_label(3, 7) == pair_label(7, 3) and len(PAIRS) == 55
    canvas = side_by_side(np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8))
    assert canvas.shape == (28, 56) and canvas[:, :28].max() == 0 and canvas[:, 28:].min() == 255
    labels = np.repeat(np.arange(10), 30)
    indices = np.arange(300)
    pairs = composite_gallery(labels, indices, per_pair=3, seed=0)
    assert len(pairs) == 45 * 3 and all(i != j for i, j in pairs)
    seen = {}
    for i, j in pairs:
        key = tuple(sorted((labels[i], labels[j])))
        assert key[0] != key[1]
        seen[key] = seen.get(key, 0) + 1
    assert set(seen.values()) == {3} and len(seen) == 45
    assert any(labels[i] > labels[j] for i, j in pairs) and any(labels[i] < labels[j] for i, j in pairs)  # any order
    with pytest.raises(ValueError, match="no instance of digit"):
        composite_gallery(labels, indices[:200], per_pair=1, seed=0)


def test_retrieval_metrics_and_chance():
    from binder.recipes.arithmetic import chance, retrieval_metrics

    holds = np.zeros((6, 10), bool)
    for g, (x, y) in enumerate([(1, 2), (1, 2), (1, 3), (2, 3), (4, 5), (1, 2)]):
        holds[g, [x, y]] = True
    scores = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 4, 5, 3]])  # top 2: items 0, 1 / items 4, 3
    m = retrieval_metrics(scores, holds, np.array([1, 1]), np.array([2, 2]), k=2)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)  # query 1: both; query 2: none
    assert m["holds_image_digit"] == pytest.approx(0.5) and m["holds_audio_digit"] == pytest.approx(0.75)
    holds = np.zeros((90, 10), bool)
    holds[np.arange(90), 0] = True
    holds[np.arange(90), np.arange(90) % 9 + 1] = True  # pairs (0, 1..9), 10 each
    c = chance(holds[:, [0, 1] + list(range(2, 10))], k=10)
    assert c["precision"] == pytest.approx(10 / 90)
    assert c["recall"] == pytest.approx(1 - math.comb(80, 10) / math.comb(90, 10))


def test_arithmetic_experiment_writes_its_report(compose, model, small_data_root, tmp_path):
    from binder.training import train

    folder = binder.save(model, tmp_path / "model")
    cfg = compose(["experiment=arithmetic", f"arithmetic.model={folder}", "arithmetic.per_pair=2",
                   "arithmetic.queries_per_pair=1", "arithmetic.sweep=[0.0,0.5,1.0]", f"data.root={small_data_root}",
                   f"arithmetic.out={tmp_path / 'bench'}", f"run_dir={tmp_path / 'run'}"])
    result = train(cfg)
    assert result["gallery"] == 90 and result["queries"] == 90
    assert set(result["rows"]) == {"image + audio (composed)", "image only", "audio only",
                                   "image + audio (uncalibrated)"}
    assert all(0 <= r["precision"] <= 1 for r in result["rows"].values())
    assert len(result["sweep"]["calibrated"]) == 3 and set(result["query_spreads"]) >= {"image", "audio"}
    for folder in (tmp_path / "run", tmp_path / "bench"):
        record = json.loads((folder / "arithmetic.json").read_text())
        assert record["binder"]["details"]["gallery"] == 90 and record["task"] == "composed_retrieval"
        assert record["metrics"]["composed_image_retrieval_precision@10"] == pytest.approx(
            100 * record["binder"]["details"]["rows"]["image + audio (composed)"]["precision"])
        assert "| image + audio (composed) |" in (folder / "arithmetic.md").read_text()
        assert (folder / "arithmetic.png").read_bytes()[:4] == b"\x89PNG"
    (folder / "arithmetic.png").unlink()  # the figure is redrawn from the saved JSON alone
    from binder.recipes.arithmetic import main

    assert main([str(folder / "arithmetic.json")]) == 0
    assert (folder / "arithmetic.png").read_bytes()[:4] == b"\x89PNG"
