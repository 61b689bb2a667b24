"""The five-modality benchmark: binder's version of ImageBind's Table 2 (arXiv 2305.05665).

For every modality and target it trains the same encoder with the same recipe and reports top-1
on the held-out instances, in three columns:

* ``emergent`` (``target=image``): bound to images only, classified against the anchor's class
  prompts (text never seen in training): ImageBind's emergent zero-shot;
* ``text-paired`` (``target=text``): the same encoder trained against class-caption embeddings;
* ``supervised`` (``target=label``): the same encoder with a linear classifier on the labels.

``binder train experiment=five_modalities`` is a Hydra multirun over ``modality`` x ``target``:
each cell is an ordinary run in ``<sweep dir>/<modality>-<target>`` (task :func:`cell`), and
:class:`TableCallback` collects their ``metrics.json`` into ``table.md``, ``table.json`` and
``table.png`` in the sweep folder after every cell. ``benchmark.resume=<sweep dir>`` runs the
sweep in that folder again: finished cells are reused, missing ones trained.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from binder.evaluation import write_metrics
from binder.files import atomic_savefig, atomic_write

log = logging.getLogger(__name__)

COLUMNS: Dict[str, str] = {"image": "emergent", "text": "text-paired", "label": "supervised"}
"""Benchmark column of each ``target``."""

GOAL_EMERGENT, GOAL_GAP = 70.0, 10.0


def _reusable(run_dir: Path, modalities: List[str], target: str) -> Optional[Dict[str, Any]]:
    """The metrics of a finished run of the same cell in ``run_dir``, if any."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("modalities") == modalities and metrics.get("target") == target else None


def cell(cfg: DictConfig) -> Dict[str, Any]:
    """One benchmark cell: a binding run (``target`` image or text) or the supervised reference
    (``target=label``), with ``benchmark.per_modality[<modality>]`` merged into its config."""
    from binder.recipes import supervised
    from binder.training import bind, modalities_of

    modalities = modalities_of(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    if cfg.benchmark.get("resume"):
        previous = _reusable(run_dir, modalities, cfg.target)
        if previous is not None:
            log.info("benchmark: %s / %s reused from %s", "+".join(modalities), cfg.target, run_dir)
            return previous
    for m in modalities:
        extra = (cfg.benchmark.get("per_modality") or {}).get(m)
        if extra:
            cfg = OmegaConf.merge(cfg, extra)
    return supervised.run(cfg) if cfg.target == "label" else bind(cfg)


def _top1(metrics: Dict[str, Any]) -> Dict[str, float]:
    rows = {**metrics.get("zero_shot", {}), **metrics.get("supervised", {})}
    if not rows:
        raise RuntimeError(f"the run produced no evaluation: {metrics}")
    row = next(iter(rows.values()))
    return {"top1": row["top1"], "top5": row.get("top5"), "chance": row["chance"], "n": row["n"]}


def collect(sweep_dir: Path, modalities: List[str], targets: List[str]) -> Dict[str, Dict[str, Any]]:
    """``{modality: {column: top-1 row}}`` from the cells' ``metrics.json`` in ``sweep_dir``."""
    results: Dict[str, Dict[str, Any]] = {}
    for m in modalities:
        for t in targets:
            path = sweep_dir / f"{m}-{t}" / "metrics.json"
            if path.is_file():
                results.setdefault(m, {})[COLUMNS[t]] = _top1(json.loads(path.read_text()))
    return results


class TableCallback(Callback):
    """Writes the benchmark table into the sweep folder after every cell and at the end.

    Args:
        modalities: Row order (the sweep's modalities).
        targets: Column order (the sweep's targets).
    """

    def __init__(self, modalities: List[str], targets: List[str]) -> None:
        self.modalities, self.targets = list(modalities), list(targets)

    def _write(self, config: DictConfig) -> Optional[Dict[str, Any]]:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        results = collect(sweep_dir, self.modalities, self.targets)
        if not results:
            return None
        return write_table(sweep_dir, results, [COLUMNS[t] for t in self.targets])

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self._write(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._write(config) is not None:
            log.info("\n%s", (Path(config.hydra.sweep.dir) / "table.md").read_text())


def check_goals(results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per modality: emergent >= 70% top-1 and within 10 points of text-paired."""
    checks = {}
    for modality, cells in results.items():
        if "emergent" not in cells:
            continue
        emergent = cells["emergent"]["top1"]
        gap = cells["text-paired"]["top1"] - emergent if "text-paired" in cells else None
        checks[modality] = {
            "emergent_ok": emergent >= GOAL_EMERGENT,
            "gap": gap,
            "gap_ok": None if gap is None else gap <= GOAL_GAP,
        }
    return checks


def cell_records(sweep_dir: Path) -> List[Dict[str, Any]]:
    """The cells' evaluation records (``<cell>/eval/*.json``, binder eval's CLIP_benchmark schema)."""
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/eval/*.json"))]


def write_table(run_dir: Path, results: Dict[str, Dict[str, Any]], columns: List[str]) -> Dict[str, Any]:
    """Write table.json (with every cell's evaluation record), table.md and table.png; return the JSON summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"columns": columns, "results": results, "checks": check_goals(results),
               "goal": f"emergent top-1 >= {GOAL_EMERGENT:g}% and within {GOAL_GAP:g} points of text-paired",
               "records": cell_records(run_dir)}
    write_metrics(run_dir / "table.json", summary)
    atomic_write(run_dir / "table.md", format_markdown(results, columns, summary["checks"]))
    plot_table(results, columns, run_dir / "table.png")
    return summary


def format_markdown(results: Dict[str, Dict[str, Any]], columns: List[str], targets: Dict[str, Any]) -> str:
    """Table 2-style markdown: one row per modality, top-1 (%) per column."""
    head = ["modality", "chance", *columns, "n", "goal met"]
    lines = ["Top-1 (%) on held-out digits-world instances; emergent = trained with images only.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for modality, cells in results.items():
        any_cell = next(iter(cells.values()))
        vals = [f"{cells[r]['top1']:.1f}" if r in cells else "-" for r in columns]
        t = targets.get(modality)
        met = "-" if t is None else ("yes" if t["emergent_ok"] and t["gap_ok"] is not False else "no")
        lines.append(f"| {modality} | {any_cell['chance']:.1f} | " + " | ".join(vals) + f" | {any_cell['n']} | {met} |")
    return "\n".join(lines) + "\n"


def plot_table(results: Dict[str, Dict[str, Any]], columns: List[str], path: Path) -> Path:
    """Grouped bar chart of top-1 per modality and column, with each modality's chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = list(results)
    width = 0.8 / max(1, len(columns))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 1.5 * len(modalities)), 4.0))
    for i, column in enumerate(columns):
        xs = [m + (i - (len(columns) - 1) / 2) * width for m in range(len(modalities))]
        ys = [results[m].get(column, {}).get("top1", 0.0) for m in modalities]
        bars = ax.bar(xs, ys, width, label=column)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    for m, name in enumerate(modalities):
        chance = next(iter(results[name].values()))["chance"]
        ax.hlines(chance, m - 0.45, m + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label="chance" if m == 0 else None)
    ax.set_xticks(range(len(modalities)), modalities)
    ax.set_ylim(0, 105)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Held-out digits world: top-1 per column\n(emergent = trained with images only)", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(columns) + 1, frameon=False)
    fig.tight_layout()
    return atomic_savefig(fig, path)
