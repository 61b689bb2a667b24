"""PNG charts of evaluation results: one run (its metrics against ImageBind's published figure, its
per-class recall or its few-shot curve) and several runs side by side (``binder eval compare``).
Figures are written atomically (:func:`binder.files.atomic_savefig`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from binder.files import atomic_savefig


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shots(metrics: Dict[str, float]) -> List[int]:
    return sorted(int(k[len("acc1@"):-len("shot")]) for k in metrics if k.startswith("acc1@") and k.endswith("shot"))


def plot_result(record: Dict[str, Any], predictions: Sequence[Dict[str, Any]], path: "str | Path") -> Path:
    """One run: its metrics as bars (with the published figure as a line), plus per-class recall
    (classification with at most 60 classes) or the few-shot curve (probes)."""
    plt = _plt()
    metrics = {k: v for k, v in record["metrics"].items() if v is not None and "_std" not in k
               and not k.startswith("classes_")}
    shots = _shots(metrics)
    per_class = _per_class(record, predictions) if not shots else {}
    panels = 2 if (shots or per_class) else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.0), squeeze=False)
    ax = axes[0][0]
    names = [k for k in metrics if not k.startswith("acc1@")] or list(metrics)
    bars = ax.bar(range(len(names)), [metrics[k] for k in names], color="#4C72B0")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    pub = (record.get("binder", {}).get("protocol") or {}).get("published")
    if pub and pub.get("metric") in names:
        i = names.index(pub["metric"])
        ax.hlines(pub["value"], i - 0.45, i + 0.45, colors="crimson", linestyles="dashed",
                  label=f"{pub['model']} (published) {pub['value']}")
        ax.legend(fontsize=7)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    info = record["binder"]
    ax.set_title(f"{record['dataset']} ({info.get('split', '')}), n={info.get('n')}", fontsize=9)
    if shots:
        _plot_shots(axes[0][1], record, shots)
    elif per_class:
        _plot_per_class(axes[0][1], per_class)
    fig.tight_layout()
    return atomic_savefig(fig, path)


def _per_class(record: Dict[str, Any], predictions: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    if record["task"] != "zeroshot_classification" or "acc1" not in record["metrics"]:
        return {}
    hits: Dict[str, List[bool]] = {}
    for row in predictions:
        if len(row.get("true", [])) == 1:
            hits.setdefault(row["true"][0], []).append(bool(row["correct"]))
    if not hits or len(hits) > 60:
        return {}
    return {k: 100.0 * sum(v) / len(v) for k, v in sorted(hits.items())}


def _plot_per_class(ax: Any, per_class: Dict[str, float]) -> None:
    names = list(per_class)
    ax.barh(range(len(names)), [per_class[n] for n in names], color="#55A868")
    ax.set_yticks(range(len(names)), names, fontsize=max(4, 9 - len(names) // 10))
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("recall (%) per class")


def _plot_shots(ax: Any, record: Dict[str, Any], shots: List[int]) -> None:
    m = record["metrics"]
    ax.errorbar(shots, [m[f"acc1@{k}shot"] for k in shots], yerr=[m.get(f"acc1@{k}shot_std", 0) for k in shots],
                marker="o", capsize=3)
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.set_xlabel("shots per class")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("few-shot linear probe (mean +- std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)


def plot_compare(records: List[Dict[str, Any]], path: "str | Path") -> Path:
    """Several runs side by side: grouped bars per (dataset, headline metric)."""
    from binder.evaluation.results import HEADLINE, run_label

    plt = _plt()
    keys: List[tuple] = []
    for r in records:
        metric = next((k for k in HEADLINE if r["metrics"].get(k) is not None), None) or next(iter(r["metrics"]), None)
        if metric and (r["dataset"], metric) not in keys:
            keys.append((r["dataset"], metric))
    labels = [run_label(r, i) for i, r in enumerate(records)]
    width = 0.8 / max(1, len(records))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 1.4 * len(keys) * max(1, len(records)) / 2), 4.0))
    for j, (record, label) in enumerate(zip(records, labels)):
        xs = [i + (j - (len(records) - 1) / 2) * width for i in range(len(keys))]
        ys = [record["metrics"].get(m) or 0.0 if record["dataset"] == d else 0.0 for d, m in keys]
        bars = ax.bar(xs, ys, width, label=f"{label} ({Path(record.get('_file', '')).name})")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(keys)), [f"{d}\n{m}" for d, m in keys], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    return atomic_savefig(fig, path)
