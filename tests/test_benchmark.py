"""The five-modality benchmark (``experiment=five_modalities``) and the supervised route."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import binder.benchmark as benchmark
from binder.training import train

SMALL = "{modality:{encoder:{depth:1,width:32,heads:2}}}"


def tiny_benchmark(run_dir: Path, root: Path, *extra: str) -> list:
    return [
        "experiment=five_modalities", "benchmark.modalities=[audio]", f"+benchmark.per_modality.audio={SMALL}",
        f"data.root={root}", "data.batch_size=8", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false", "trainer.check_val_every_n_epoch=1", f"run_dir={run_dir}", *extra,
    ]


def test_benchmark_writes_table(compose, tiny_anchor, small_data_root, tmp_path, monkeypatch):
    summary = train(compose(tiny_benchmark(tmp_path, small_data_root)))
    cells = summary["results"]["audio"]
    assert list(cells) == ["emergent", "text-paired", "supervised"]
    for cell in cells.values():
        assert 0.0 <= cell["top1"] <= 100.0 and cell["chance"] == pytest.approx(10.0) and cell["n"] == 10
    for route in ("emergent", "text-paired", "supervised"):  # one run directory per cell
        assert (tmp_path / "runs" / f"audio-{route}" / "metrics.json").is_file()
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["results"] == json.loads(json.dumps(summary["results"]))
    md = (tmp_path / "table.md").read_text()
    assert "| audio | 10.0 |" in md and "text-paired" in md and "supervised" in md
    with Image.open(tmp_path / "table.png") as img:
        assert img.format == "PNG" and img.size[0] > 200
    assert not list(tmp_path.glob("*.tmp*"))

    # Resuming reuses every finished cell: nothing is trained again.
    monkeypatch.setattr("binder.training.bind", lambda cfg: pytest.fail("retrained a finished cell"))
    again = train(compose(tiny_benchmark(tmp_path / "again", small_data_root, f"benchmark.resume={tmp_path}")))
    assert again["results"] == saved["results"]


def test_supervised_route(compose, tiny_anchor, small_data_root, tmp_path):
    cfg = compose(["modality=audio", "partner=label", "++modality.encoder={depth:1,width:32,heads:2}",
                   f"data.root={small_data_root}", "data.batch_size=8", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                   "trainer.enable_progress_bar=false", f"run_dir={tmp_path}"])
    metrics = train(cfg)
    row = metrics["supervised"]["audio->label (supervised)"]
    assert row["n"] == 10 and 0 <= row["top1"] <= row["top5"] <= 100
    logs = (next((tmp_path / "logs").rglob("metrics.csv"))).read_text()
    assert "train/loss/audio-label" in logs


def test_targets_and_markdown():
    cell = lambda top1: {"top1": top1, "top5": 100.0, "chance": 10.0, "n": 2000}  # noqa: E731
    results = {
        "depth": {"emergent": cell(91.0), "text-paired": cell(95.0), "supervised": cell(98.0)},
        "imu": {"emergent": cell(75.0), "text-paired": cell(90.0), "supervised": cell(97.0)},  # gap 15
        "video": {"emergent": cell(65.0), "text-paired": cell(70.0), "supervised": cell(90.0)},  # below 70
    }
    targets = benchmark.check_targets(results)
    assert targets["depth"] == {"emergent_ok": True, "gap": 4.0, "gap_ok": True}
    assert targets["imu"]["emergent_ok"] and not targets["imu"]["gap_ok"]
    assert not targets["video"]["emergent_ok"]
    md = benchmark.format_markdown(results, list(benchmark.ROUTES), targets)
    rows = [line for line in md.splitlines() if line.startswith("| ") and "modality" not in line]
    assert rows == [
        "| depth | 10.0 | 91.0 | 95.0 | 98.0 | 2000 | yes |",
        "| imu | 10.0 | 75.0 | 90.0 | 97.0 | 2000 | no |",
        "| video | 10.0 | 65.0 | 70.0 | 90.0 | 2000 | no |",
    ]


def test_benchmark_rejects_unknown_route(compose, tmp_path):
    with pytest.raises(ValueError, match="smell"):
        train(compose(["experiment=five_modalities", "benchmark.routes=[emergent,smell]", f"run_dir={tmp_path}"]))


@pytest.mark.slow
def test_five_modalities_meet_targets(compose, data_root, tmp_path):
    """The whole experiment with its defaults (about 30 min on 2 CPU cores): every modality's
    emergent top-1 >= 70% on held-out instances and within 10 points of text-paired (issue #3)."""
    summary = train(compose(["experiment=five_modalities", f"run_dir={tmp_path}", f"paths.cache={tmp_path / 'cache'}",
                             "trainer.enable_progress_bar=false"]))
    assert list(summary["results"]) == ["audio", "depth", "thermal", "imu", "video"]
    for modality, cells in summary["results"].items():
        assert set(cells) == {"emergent", "text-paired", "supervised"}, modality
        assert cells["emergent"]["top1"] >= 70.0, (modality, cells)
        assert cells["text-paired"]["top1"] - cells["emergent"]["top1"] <= 10.0, (modality, cells)
