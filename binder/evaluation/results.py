"""Evaluation results: LAION CLIP_benchmark's JSON, per-item predictions (Parquet), terminal tables.

The JSON record has CLIP_benchmark's top-level keys (``dataset``, ``model``, ``pretrained``,
``task``, ``metrics``, ``language``, plus ``templates`` and ``classnames``; metric names as that
tool writes them, see :mod:`binder.evaluation.metrics`), so tools that read CLIP_benchmark
results read binder's; everything binder adds (its version, the model fingerprint, the protocol
with its name, version and choices, n, the skipped items with their reasons, wall time, the
embedding cache, ImageBind's published figure) sits under the one key ``binder``. Every file is
written atomically (:func:`binder.files.atomic_write`): an interrupted run leaves no half-written
JSON.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

from binder.errors import BinderInputError
from binder.files import atomic_write

CLIP_BENCHMARK_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")
HEADLINE = ("acc1", "mean_average_precision", "acc5", "mean_per_class_recall")


@dataclass
class EvalResult:
    """The result of :func:`binder.evaluate`: metrics and one prediction row per item.

    Attributes:
        record: The CLIP_benchmark JSON record (``record["binder"]`` holds binder's additions).
        predictions: One dict per item (id, true label(s), top-5 predictions with scores, correct).
        paths: Files written (json, predictions, chart).
    """

    record: Dict[str, Any]
    predictions: List[Dict[str, Any]] = field(default_factory=list)
    paths: Dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> Dict[str, float]:
        return self.record["metrics"]

    @property
    def skipped(self) -> List[Dict[str, str]]:
        return self.record["binder"]["skipped"]

    def table(self) -> Any:
        """The predictions as a ``pyarrow.Table``."""
        import pyarrow as pa

        return pa.Table.from_pylist(self.predictions)

    def to_pandas(self) -> Any:
        """The predictions as a pandas DataFrame (pandas must be installed)."""
        return self.table().to_pandas()

    def __repr__(self) -> str:
        r = self.record
        return f"EvalResult({r['dataset']}, {r['binder']['split']}, {headline(r)})"


def headline(record: Dict[str, Any]) -> str:
    """The first headline metric of a record, e.g. ``acc1=66.9``."""
    metrics = record.get("metrics", {})
    for key in (*HEADLINE, *sorted(metrics)):
        if key in metrics:
            return f"{key}={metrics[key]:.2f}"
    return "no metrics"


def make_record(dataset: str, model: str, pretrained: str, task: str, metrics: Dict[str, float],
                classnames: Sequence[str] = (), templates: Sequence[str] = (), language: str = "en",
                **binder: Any) -> Dict[str, Any]:
    """A CLIP_benchmark result record; ``binder`` keyword arguments go under the ``binder`` key."""
    from binder import __version__

    clean = {k: (None if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in metrics.items()}
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": clean,
            "language": language, "templates": list(templates), "classnames": list(classnames),
            "binder": {"version": __version__, **binder}}


def check_writable(path: "str | os.PathLike", what: str) -> Path:
    """``path`` if a file can be written there (its folder exists and is writable, it is not a
    folder); one error naming it otherwise, before any work is done."""
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BinderInputError(f"{what} path {str(path)!r} is a folder; expected a file name")
    if not parent.is_dir():
        raise BinderInputError(f"{what} path {str(path)!r} cannot be written: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise BinderInputError(f"{what} path {str(path)!r} cannot be written: permission denied")
    return path


def write_json(record: Dict[str, Any], path: "str | os.PathLike") -> Path:
    """Write a record (or any JSON-able value) atomically."""
    return atomic_write(path, json.dumps(record, indent=2, default=str) + "\n")


def write_metrics(path: "str | os.PathLike", metrics: Dict[str, Any]) -> Path:
    """Write ``metrics`` as JSON at ``path``, atomically (training runs and recipes)."""
    return write_json(metrics, path)


def write_predictions(result: EvalResult, path: "str | os.PathLike") -> Path:
    """Write the per-item predictions as Parquet (with the record as file metadata), atomically."""
    import io

    import pyarrow.parquet as pq

    table = result.table()
    meta = dict(table.schema.metadata or {})
    record = {k: v for k, v in result.record.items() if k != "classnames"}
    meta[b"binder.eval"] = json.dumps(record, default=str).encode()
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buffer)
    return atomic_write(path, buffer.getvalue())


def read_records(paths: Sequence["str | os.PathLike"]) -> List[Dict[str, Any]]:
    """Records from JSON files (one record, or a list of them, or an object with ``records``)."""
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise BinderInputError(f"result file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BinderInputError(f"result file {str(path)!r} is not JSON: {err}") from None
        items = data if isinstance(data, list) else data.get("records", [data]) if isinstance(data, dict) else []
        for item in items:
            missing = [k for k in CLIP_BENCHMARK_KEYS if not isinstance(item, dict) or k not in item]
            if missing:
                raise BinderInputError(f"result file {str(path)!r} is not a CLIP_benchmark result: it lacks {missing}")
            out.append({**item, "_file": str(path)})
    return out


def format_result(record: Dict[str, Any]) -> str:
    """A terminal table of one record: its metrics, n, skipped, and the published figure."""
    b = record.get("binder", {})
    lines = [f"{record['dataset']} ({b.get('split', '?')}, {record['task']}) | model {record['model']}",
             f"{'metric':<34}{'value':>10}"]
    for key, value in record["metrics"].items():
        lines.append(f"{key:<34}{_num(value):>10}")
    pub = (b.get("protocol") or {}).get("published")
    if pub:
        lines.append(f"{'published (' + pub['model'] + ', ' + pub['metric'] + ')':<34}{_num(pub['value']):>10}")
    lines.append(f"n = {b.get('n', '?')}, skipped = {len(b.get('skipped', []))}, "
                 f"embedding cache: {b.get('embedding_cache', '?')}, {b.get('wall_time_s', 0):.1f} s")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def format_compare(records: List[Dict[str, Any]]) -> str:
    """Runs side by side: one row per (dataset, metric), one column per run."""
    labels = [run_label(r, i) for i, r in enumerate(records)]
    keys: List[tuple] = []
    for r in records:
        for m in r["metrics"]:
            if (r["dataset"], m) not in keys:
                keys.append((r["dataset"], m))
    width = max([12, *(len(lb) + 2 for lb in labels)])
    lines = [f"{'dataset':<14}{'metric':<30}" + "".join(f"{lb:>{width}}" for lb in labels)]
    for dataset, metric in keys:
        cells = [rec["metrics"].get(metric) if rec["dataset"] == dataset else None for rec in records]
        lines.append(f"{dataset:<14}{metric:<30}" + "".join(f"{_num(c):>{width}}" for c in cells))
    return "\n".join(lines)


def run_label(record: Dict[str, Any], i: int) -> str:
    """A short column label for a run: its model's name (and its file's name when ambiguous)."""
    name = Path(str(record.get("model", f"run{i}"))).name or f"run{i}"
    return name if len(name) <= 28 else name[:25] + "..."


# ----------------------------------------------------------------------------------------------
# The digits tables (training runs, the five-modality benchmark)
# ----------------------------------------------------------------------------------------------

def format_table(rows: Dict[str, Dict[str, float]], title: str) -> str:
    """A small fixed-width table: one row per entry with chance, top-1 and top-5."""
    lines = [title, f"{'':<30}{'chance':>8}{'top-1':>8}{'top-5':>8}{'n':>7}"]
    for name, r in rows.items():
        lines.append(f"{name:<30}{r['chance']:>8.1f}{r['top1']:>8.1f}{r.get('top5', float('nan')):>8.1f}{r['n']:>7d}")
    return "\n".join(lines)
