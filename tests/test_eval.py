"""binder eval: metrics, the embedding cache, outputs (JSON, Parquet, PNG), few-shot probes, the
CLI (eval, --list, compare), plugins, and every bad input the issue names."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Tuple

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import binder
from binder.cli import main
from binder.errors import BinderInputError
from binder.evaluation import CLIP_TEMPLATES, DATASETS, evaluate
from binder.evaluation.metrics import average_precision, multilabel_metrics, retrieval_metrics
from binder.evaluation.prompts import check_templates, grouped_scores, resolve_templates
from eval_layouts import tone, write_esc50

FEW = ["a sound of {}."]


@pytest.fixture(scope="module")
def esc(tmp_path_factory):
    return write_esc50(tmp_path_factory.mktemp("esc") / "ESC-50")


def ev(model, root, tmp_path, **kw):
    kw.setdefault("templates", FEW)
    return evaluate(model, "esc50", root, cache_dir=tmp_path / "cache", progress=False, **kw)


# ----------------------------------------------------------------------------------------------
# Metrics and prompts
# ----------------------------------------------------------------------------------------------

def test_metrics_on_known_cases():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    targets = np.array([[1, 0], [0, 0], [1, 1]], bool)
    out = multilabel_metrics(np.array([[0.9, 0.1], [0.5, 0.2], [0.1, 0.8]]), targets)
    assert (out["classes_with_positives"] == 2
            and out["mean_average_precision"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2))
    text, items = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[[0, 2, 1]]
    r = retrieval_metrics(text, items, np.array([0, 1, 2]), "audio")["metrics"]
    assert r["audio_retrieval_recall@1"] == pytest.approx(100 / 3) and r["audio_retrieval_recall@5"] == 100.0
    assert len(CLIP_TEMPLATES) == 80 and len(set(CLIP_TEMPLATES)) == 80


def test_class_with_several_names_scores_as_their_max():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    names = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.6, 0.8]])  # class 0 has names 0 and 2
    scores = grouped_scores(emb, names, [0, 1, 0], 2)
    assert torch.allclose(scores, torch.tensor([[0.9, 0.1], [0.8, 0.9]]))


def test_templates_checked_and_resolved(tmp_path):
    with pytest.raises(BinderInputError, match="exactly one"):
        check_templates(["a sound of"])
    with pytest.raises(BinderInputError, match="unknown template set"):
        resolve_templates(["@nope"])
    (tmp_path / "t.txt").write_text("# mine\na {} sound.\n\nthe {}.\n")
    assert resolve_templates(templates_file=tmp_path / "t.txt") == ["a {} sound.", "the {}."]
    assert resolve_templates(["@sound", "x {}"])[-1] == "x {}"


# ----------------------------------------------------------------------------------------------
# The embedding cache
# ----------------------------------------------------------------------------------------------

def test_cache_hit_other_prompts_and_stale_or_partial_entries(audio_model, esc, tmp_path, monkeypatch):
    first = ev(audio_model, esc["root"], tmp_path)
    assert first.record["binder"]["embedding_cache"] == "miss"
    calls = []
    import binder.evaluation.run as run_mod

    real = run_mod.embed_records
    monkeypatch.setattr(run_mod, "embed_records", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = ev(audio_model, esc["root"], tmp_path, templates=["the {} noise.", "a {}."])
    assert again.record["binder"]["embedding_cache"] == "hit" and not calls  # other prompts: no re-embedding
    assert again.record["templates"] == ["the {} noise.", "a {}."]
    same = ev(audio_model, esc["root"], tmp_path)
    assert same.predictions == first.predictions

    entry = Path(first.record["binder"]["cache_entry"])
    array = entry / "embeddings.npy"
    array.write_bytes(array.read_bytes()[:-64])  # a partial array
    partial = ev(audio_model, esc["root"], tmp_path)
    assert partial.record["binder"]["embedding_cache"] == "miss" and len(calls) == 1
    assert partial.predictions == first.predictions

    wav = next((esc["root"] / "audio").glob("1-*.wav"))  # a data file changes: the entry is stale
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    stale = ev(audio_model, esc["root"], tmp_path)
    assert stale.record["binder"]["embedding_cache"] == "miss" and len(calls) == 2

    other = binder.BindModel(audio_model.anchor, {"audio": {}}).eval()  # other weights: another key
    assert ev(other, esc["root"], tmp_path).record["binder"]["embedding_cache"] == "miss"
    off = ev(audio_model, esc["root"], tmp_path, cache=False)
    assert off.record["binder"]["embedding_cache"] == "off" and len(calls) == 4


def test_an_interrupted_run_leaves_no_cache_entry_or_json(audio_model, esc, tmp_path, monkeypatch):
    import binder.embedding as emb

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(emb, "_collate", interrupted)  # Ctrl-C while embedding
    with pytest.raises(KeyboardInterrupt):
        ev(audio_model, esc["root"], tmp_path, json_path=tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    monkeypatch.undo()
    import binder.files

    monkeypatch.setattr(binder.files, "os", _FailingReplace())  # Ctrl-C as a file is moved into place
    with pytest.raises(KeyboardInterrupt):  # ... the cache entry
        ev(audio_model, esc["root"], tmp_path, json_path=tmp_path / "out.json")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    with pytest.raises(KeyboardInterrupt):  # ... the JSON
        ev(audio_model, esc["root"], tmp_path, json_path=tmp_path / "out.json", cache=False)
    assert not list(tmp_path.glob("*out.json*"))  # neither the JSON nor its temporary


class _FailingReplace:
    """``os`` for atomic_write whose ``replace`` is interrupted."""

    def replace(self, *args):
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(os, name)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def test_json_predictions_and_chart(audio_model, esc, tmp_path):
    result = ev(audio_model, esc["root"], tmp_path, json_path=tmp_path / "r.json",
                predictions=tmp_path / "p.parquet", chart=tmp_path / "r.png", model_name="tiny")
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["model"] == "tiny" and record["task"] == "zeroshot_classification" and record["language"] == "en"
    assert record["classnames"] == esc["classnames"] and record["templates"] == FEW
    assert set(record["metrics"]) >= {"acc1", "acc5", "mean_per_class_recall"}
    b = record["binder"]
    assert b["version"] == binder.__version__ and len(b["model_fingerprint"]) == 64 and b["n"] == esc["n"]
    assert b["protocol"]["name"] == "esc50-imagebind" and b["protocol"]["published"]["value"] == 66.9
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.num_rows == esc["n"] and {"id", "true", "top5", "top5_scores", "correct"} <= set(table.column_names)
    assert b"binder.eval" in table.schema.metadata
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [r["id"] for r in result.predictions]
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_few_shot_probes_cross_fold(audio_model, esc, tmp_path):
    result = ev(audio_model, esc["root"], tmp_path, probe=True, shots=(1, 2), seeds=(0, 1, 2),
                chart=tmp_path / "probe.png")
    m = result.metrics
    assert set(m) == {"acc1@1shot", "acc1@1shot_std", "acc1@2shot", "acc1@2shot_std"}
    details = result.record["binder"]["details"]
    assert details["folds"] == 5 and len(details["per_seed"]["2"]) == 3
    assert m["acc1@2shot"] == pytest.approx(np.mean(details["per_seed"]["2"]))
    assert result.record["task"] == "linear_probe" and (tmp_path / "probe.png").is_file()


def test_probe_learns_a_separable_problem():
    from binder.evaluation.probe import few_shot

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    make = lambda n: (np.repeat(centres, n, 0) + 0.1 * rng.normal(size=(4 * n, 16)), np.repeat(np.arange(4), n))  # noqa: E731
    (tx, ty), (vx, vy) = make(20), make(10)
    metrics, _ = few_shot([(tx.astype(np.float32), ty, vx.astype(np.float32), vy)], 4, shots=(1, 4), seeds=(0, 1, 2))
    assert metrics["acc1@4shot"] == 100.0 and metrics["acc1@1shot"] >= 90.0


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

def test_cli_eval_list_and_compare(audio_model, esc, tmp_path, capsys, monkeypatch):
    folder = binder.save(audio_model, tmp_path / "model")
    monkeypatch.setenv("BINDER_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("esc50", "audioset", "vggsound", "clotho", "audiocaps", "nyud", "sunrgbd", "llvip", "ego4d-imu",
                 "kinetics400", "msrvtt", "folder", "manifest"):
        assert f"\n{name} " in listing
    assert main(["eval", "--model", str(folder), "--dataset", "esc50", "--root", str(esc["root"]), "--templates",
                 "a sound of {}.", "--json", str(tmp_path / "a.json"),
                 "--predictions", str(tmp_path / "a.parquet")]) == 0
    out = capsys.readouterr()
    assert "acc1" in out.out and "published (imagebind_huge, acc1)" in out.out and (tmp_path / "a.png").is_file()
    assert main(["eval", "--model", str(folder), "--dataset", "esc50", "--root", str(esc["root"]), "--split", "fold1",
                 "--templates-file", str(_templates(tmp_path)), "--json", str(tmp_path / "b.json"),
                 "--name", "fold1"]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--chart",
                 str(tmp_path / "cmp.png")]) == 0
    table = capsys.readouterr().out
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert f"{a['metrics']['acc1']:.2f}" in table and f"{b['metrics']['acc1']:.2f}" in table and "fold1" in table
    assert (tmp_path / "cmp.png").is_file()


def _templates(tmp_path: Path) -> Path:
    (tmp_path / "t.txt").write_text("the sound of a {}.\n")
    return tmp_path / "t.txt"


def test_a_plugin_dataset_is_one_module(tmp_path, audio_model):
    """A dataset registered from outside binder is listed and evaluated like a built-in one."""
    from binder.evaluation.base import CLASSIFICATION, ProtocolInfo, Record, Split

    @dataclass
    class Beeps:
        name: ClassVar[str] = "beeps"
        title: ClassVar[str] = "beeps"
        task: ClassVar[str] = CLASSIFICATION
        modality: ClassVar[str] = "audio"
        splits: ClassVar[Tuple[str, ...]] = ("test",)
        default_split: ClassVar[str] = "test"
        layout: ClassVar[str] = "<root>/<n>.wav"

        def read(self, root, split):
            recs = [Record(id=p.name, source=str(p), label=i % 2) for i, p in enumerate(sorted(root.glob("*.wav")))]
            return Split("beeps", split, "audio", CLASSIFICATION, recs, ProtocolInfo("beeps", "1", "test"),
                         classnames=["low", "high"], templates=["a {} beep."])

        def load(self, record):
            return record.source

    for i in range(4):
        tone(tmp_path / f"{i}.wav", 300 + 500 * (i % 2))
    DATASETS.register("beeps", Beeps)
    try:
        assert "beeps" in binder.evaluation.list_datasets()
        assert evaluate(audio_model, "beeps", tmp_path, cache=False, progress=False).record["binder"]["n"] == 4
    finally:
        DATASETS.unregister("beeps")
    with pytest.raises(BinderInputError, match="lacks read, load"):
        DATASETS.register("broken", type("Broken", (), {"name": "x", "title": "x", "task": "x", "modality": "x",
                                                        "splits": (), "default_split": "x", "layout": "x"}))


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------

def test_bad_roots_layouts_and_columns(audio_model, tmp_path):
    with pytest.raises(BinderInputError, match="does not exist; expected <root>/meta/esc50.csv"):
        ev(audio_model, tmp_path / "nowhere", tmp_path)
    (tmp_path / "other").mkdir()
    with pytest.raises(BinderInputError, match=r"meta/esc50.csv.*not found"):
        ev(audio_model, tmp_path / "other", tmp_path)
    info = write_esc50(tmp_path / "esc", per_fold=1)
    meta = info["root"] / "meta" / "esc50.csv"
    meta.write_text(meta.read_text().replace("category", "kind"))
    with pytest.raises(BinderInputError, match=r"lacks column\(s\) \['category'\]"):
        ev(audio_model, info["root"], tmp_path)
    with pytest.raises(BinderInputError, match="unknown evaluation dataset 'esc-51'.*esc50"):
        evaluate(audio_model, "esc-51", tmp_path)
    with pytest.raises(BinderInputError, match="has no option 'folds'"):
        evaluate(audio_model, "esc50", tmp_path, options={"folds": "1"})
    with pytest.raises(BinderInputError, match="has no split 'fold9'"):
        ev(audio_model, info["root"], tmp_path, split="fold9")


def test_corrupt_silent_and_missing_files_are_skipped_and_listed(audio_model, tmp_path):
    info = write_esc50(tmp_path / "esc", per_fold=2)
    audio = info["root"] / "audio"
    files = sorted(audio.glob("*.wav"))
    files[0].write_bytes(b"RIFF....WAVEfmt nonsense")
    tone(files[1], 1).write_bytes(files[1].read_bytes())
    import soundfile as sf

    sf.write(files[1], np.zeros(16000, np.float32), 16000)
    files[2].unlink()
    result = ev(audio_model, info["root"], tmp_path, json_path=tmp_path / "r.json")
    reasons = {s["id"]: s["reason"] for s in json.loads((tmp_path / "r.json").read_text())["binder"]["skipped"]}
    assert "not readable audio" in reasons[files[0].name] and "silent" in reasons[files[1].name]
    assert "not found in audio/" in reasons[files[2].name]
    assert result.record["binder"]["n"] == info["n"] - 3 and result.record["binder"]["n_listed"] == info["n"] - 1


def test_model_without_the_modality_empty_split_templates_and_unwritable_outputs(audio_model, random_anchor,
                                                                                  esc, tmp_path):
    from eval_layouts import write_nyud

    nyu = write_nyud(tmp_path / "nyud")
    with pytest.raises(BinderInputError, match=r"needs depth but this model has no depth encoder; it embeds "
                                               r"\['image', 'text', 'audio'\]"):
        evaluate(audio_model, "nyud", nyu["root"], progress=False, cache=False)
    empty = write_esc50(tmp_path / "empty", per_fold=1)
    for f in (empty["root"] / "audio").glob("*"):
        f.unlink()
    with pytest.raises(BinderInputError, match="holds no items"):
        ev(audio_model, empty["root"], tmp_path)
    with pytest.raises(BinderInputError, match="exactly one"):
        ev(audio_model, esc["root"], tmp_path, templates=["a sound"])
    with pytest.raises(BinderInputError, match="does not exist"):
        ev(audio_model, esc["root"], tmp_path, predictions=tmp_path / "no" / "such" / "p.parquet")
    with pytest.raises(BinderInputError, match="is a folder; expected a file name"):
        ev(audio_model, esc["root"], tmp_path, predictions=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BinderInputError, match="cannot be written"):
        ev(audio_model, esc["root"], tmp_path, json_path=tmp_path / "file" / "r.json")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--dataset", "esc50"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--dataset", "esc50", "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ESC-50 root") and err.count("\n") == 1
