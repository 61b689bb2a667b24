"""The five-modality benchmark: binder's version of ImageBind's Table 2 (arXiv 2305.05665).

For every modality and route it trains the same encoder with the same recipe and reports top-1
on the held-out instances:

* ``emergent``: bound to images only, classified against the anchor's class prompts (text never
  seen in training): ImageBind's emergent zero-shot;
* ``text-paired``: the same encoder trained directly against class-caption text embeddings;
* ``supervised``: the same encoder with a linear classifier trained on the labels.

``python train.py experiment=five_modalities`` writes ``table.md``, ``table.json`` and
``table.png`` (a grouped bar chart) into the run directory, updating them after every run, and
``benchmark.resume=<previous run dir>`` reuses finished runs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List

from omegaconf import DictConfig, OmegaConf

from binder.evaluation import write_metrics

log = logging.getLogger(__name__)

ROUTES: Dict[str, str] = {"emergent": "image", "text-paired": "text", "supervised": "label"}
"""Benchmark column -> the ``partner`` the run trains against."""

TARGET_EMERGENT, TARGET_GAP = 70.0, 10.0


def _modality_node(name: str) -> DictConfig:
    """The ``modality=<name>`` config group node, composed by Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name="train", overrides=[f"modality={name}"]).modality
    config_dir = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return compose(config_name="train", overrides=[f"modality={name}"]).modality


def run_config(cfg: DictConfig, modality: str, route: str, run_dir: Path) -> DictConfig:
    """The training config of one benchmark cell: the parent config with another modality,
    partner and run directory, merged with ``benchmark.per_modality[modality]`` (a config node)."""
    sub = OmegaConf.to_container(cfg, resolve=True)
    sub.pop("benchmark", None)
    sub = OmegaConf.create(sub)
    sub.modality = _modality_node(modality)
    sub.task, sub.partner, sub.run_dir = "bind", ROUTES[route], str(run_dir)
    extra = (cfg.benchmark.get("per_modality") or {}).get(modality)
    return OmegaConf.merge(sub, extra) if extra else sub


def _top1(metrics: Dict[str, Any]) -> Dict[str, float]:
    rows = {**metrics.get("zero_shot", {}), **metrics.get("supervised", {})}
    if not rows:
        raise RuntimeError(f"the run produced no evaluation: {metrics}")
    row = next(iter(rows.values()))
    return {"top1": row["top1"], "top5": row.get("top5"), "chance": row["chance"], "n": row["n"]}


def _load_previous(path: "str | None") -> Dict[str, Dict[str, Any]]:
    if not path:
        return {}
    table = Path(path) / "table.json"
    if not table.is_file():
        raise FileNotFoundError(f"benchmark.resume={path}: no table.json there")
    return json.loads(table.read_text())["results"]


def run_benchmark(cfg: DictConfig) -> Dict[str, Any]:
    """Train every (modality, route) cell of ``cfg.benchmark`` and write the result table."""
    from binder.training import bind

    run_dir = Path(cfg.run_dir).resolve()
    bcfg = cfg.benchmark
    unknown = sorted(set(bcfg.routes) - set(ROUTES))
    if unknown:
        raise ValueError(f"benchmark.routes has unknown routes {unknown}; expected some of {list(ROUTES)}")
    results: Dict[str, Dict[str, Any]] = _load_previous(bcfg.get("resume"))
    for modality in bcfg.modalities:
        for route in bcfg.routes:
            if route in results.get(modality, {}):
                log.info("benchmark: %s / %s reused from %s", modality, route, bcfg.resume)
                continue
            log.info("benchmark: training %s / %s", modality, route)
            metrics = bind(run_config(cfg, modality, route, run_dir / "runs" / f"{modality}-{route}"))
            results.setdefault(modality, {})[route] = _top1(metrics)
            write_table(run_dir, results, list(bcfg.routes))
    order = [*bcfg.modalities, *[m for m in results if m not in bcfg.modalities]]
    results = {m: results[m] for m in order if m in results}  # rows in benchmark.modalities order
    summary = write_table(run_dir, results, list(bcfg.routes))
    log.info("\n%s", (run_dir / "table.md").read_text())
    return summary


def check_targets(results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per modality: emergent >= 70% top-1 and within 10 points of text-paired."""
    checks = {}
    for modality, cells in results.items():
        if "emergent" not in cells:
            continue
        emergent = cells["emergent"]["top1"]
        gap = cells["text-paired"]["top1"] - emergent if "text-paired" in cells else None
        checks[modality] = {
            "emergent_ok": emergent >= TARGET_EMERGENT,
            "gap": gap,
            "gap_ok": None if gap is None else gap <= TARGET_GAP,
        }
    return checks


def write_table(run_dir: Path, results: Dict[str, Dict[str, Any]], routes: List[str]) -> Dict[str, Any]:
    """Write table.json, table.md and table.png; return the JSON summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {"routes": routes, "results": results, "targets": check_targets(results),
               "target_rule": f"emergent top-1 >= {TARGET_EMERGENT:g}% and within {TARGET_GAP:g} points of text-paired"}
    write_metrics(run_dir / "table.json", summary)
    _write_atomic(run_dir / "table.md", format_markdown(results, routes, summary["targets"]))
    plot_table(results, routes, run_dir / "table.png")
    return summary


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def format_markdown(results: Dict[str, Dict[str, Any]], routes: List[str], targets: Dict[str, Any]) -> str:
    """Table 2-style markdown: one row per modality, top-1 (%) per route."""
    head = ["modality", "chance", *routes, "n", "target met"]
    lines = ["Top-1 (%) on held-out digits-world instances; emergent = trained with images only.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for modality, cells in results.items():
        any_cell = next(iter(cells.values()))
        vals = [f"{cells[r]['top1']:.1f}" if r in cells else "-" for r in routes]
        t = targets.get(modality)
        met = "-" if t is None else ("yes" if t["emergent_ok"] and t["gap_ok"] is not False else "no")
        lines.append(f"| {modality} | {any_cell['chance']:.1f} | " + " | ".join(vals) + f" | {any_cell['n']} | {met} |")
    return "\n".join(lines) + "\n"


def plot_table(results: Dict[str, Dict[str, Any]], routes: List[str], path: Path) -> Path:
    """Grouped bar chart of top-1 per modality and route, with each modality's chance level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = list(results)
    width = 0.8 / max(1, len(routes))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 1.5 * len(modalities)), 4.0))
    for i, route in enumerate(routes):
        xs = [m + (i - (len(routes) - 1) / 2) * width for m in range(len(modalities))]
        ys = [results[m].get(route, {}).get("top1", 0.0) for m in modalities]
        bars = ax.bar(xs, ys, width, label=route)
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    for m, name in enumerate(modalities):
        chance = next(iter(results[name].values()))["chance"]
        ax.hlines(chance, m - 0.45, m + 0.45, colors="black", linestyles="dashed", linewidth=1,
                  label="chance" if m == 0 else None)
    ax.set_xticks(range(len(modalities)), modalities)
    ax.set_ylim(0, 105)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Held-out digits world: top-1 per route\n(emergent = trained with images only)", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(routes) + 1, frameon=False)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
