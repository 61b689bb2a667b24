"""Leave-one-speaker-out: how well an audio recipe holds on a speaker it never heard.

The digits world's audio holds five FSDD speakers. For each one, the run's recipe (its
``modality.audio`` settings, augmentation included, and everything else of the config) trains
the audio encoder against images on the other four speakers' recordings and measures emergent
audio -> text top-1 on every recording of the held-out one (``data.holdout=speakers``); one more
run holds out takes 0-4 of every speaker (the quick start's split), for comparison. Folds are
ordinary runs in ``<run>/<speaker>`` and ``<run>/takes``; a finished fold is reused when the
command runs again in the same folder (``hydra.run.dir=<run>``). ``speakers.md`` and
``speakers.json`` in the run folder get the table (rewritten after every fold). With
``speakers.enroll`` (``coral``, the default, or ``mean``; null: none) the table has one more
column: the held-out speaker scored after enrollment (:mod:`binder.enrollment`: their embeddings
aligned to the training speakers' from the other half of their takes, whose labels are not used),
the figure for a user who has some unlabelled audio of the speaker (on the takes split, each
speaker is enrolled on their training takes); the goals are judged on the plain figure.

    binder train experiment=leave_one_speaker_out
    binder train experiment=leave_one_speaker_out modality.audio.augment.variants=0   # another recipe
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from binder.config import SCHEMAS, build_dataclass
from binder.errors import BinderConfigError
from binder.evaluation import write_metrics
from binder.files import atomic_write

log = logging.getLogger(__name__)

TAKES = "takes"
GOALS = {"mean": 85.0, "worst": 75.0}


@dataclass
class SpeakersConfig:
    """The ``speakers`` node of ``experiment=leave_one_speaker_out``."""

    speakers: Optional[List[str]] = None  # speakers to hold out in turn; None: every FSDD speaker
    takes: bool = True  # also run the held-out-takes split (takes 0-4 of every speaker)
    enroll: Optional[str] = "coral"  # also score each held-out speaker after binder.enroll (align: coral | mean)


SCHEMAS.register("recipe/speakers", SpeakersConfig)


def _fsdd_root(cfg: DictConfig) -> Path:
    from binder.datasets.digits import DigitsConfig
    from binder.datasets.paths import data_root

    return data_root(build_dataclass(DigitsConfig, {k: v for k, v in cfg.data.items() if k != "_target_"},
                                     "data").root) / "fsdd"


def _speakers(cfg: DictConfig, chosen: Optional[List[str]]) -> List[str]:
    from binder.datasets.fsdd import list_recordings

    root = _fsdd_root(cfg)
    every = sorted({r.speaker for r in list_recordings(root)})
    unknown = sorted(set(chosen or []) - set(every))
    if unknown:
        raise BinderConfigError(f"speakers.speakers: {unknown} are not FSDD speakers of {root} ({every})")
    return list(chosen) if chosen else every


def fold_config(cfg: DictConfig, fold: str, run_dir: Path) -> DictConfig:
    """The run's config for one fold: a speaker held out, or (``takes``) takes 0-4 held out."""
    sub = OmegaConf.to_container(cfg, resolve=False)  # ${run_dir} (checkpoints, logs) then points into the fold
    sub["task"], sub["run_dir"] = "binder.training.bind", str(run_dir / fold)
    sub.pop("speakers", None)
    data = dict(sub["data"])
    if fold == TAKES:
        data.update(holdout="takes")
    else:
        data.update(holdout="speakers", test_speakers=[fold])
    sub["data"] = data
    return OmegaConf.create(sub)


def fsdd_embeddings(model_dir: Path, fsdd: Path) -> Dict[str, Any]:
    """Every FSDD recording embedded by the model of ``model_dir``: ``z`` (N, D), ``digit``,
    ``take`` (N,), ``speaker`` (N names), the class prompts' ``classes`` (C, D) and the model's
    audio ``fingerprint``."""
    import torch

    from binder.datasets.digits import CLASSNAMES, TEMPLATES
    from binder.datasets.fsdd import list_recordings
    from binder.evaluation.prompts import anchor_class_embeddings
    from binder.io import load

    recs = list_recordings(fsdd)
    model = load(model_dir)
    return {"z": model.embed(audio=[str(r.path) for r in recs], progress=False)["audio"],  # (N, D)
            "digit": torch.tensor([r.digit for r in recs]), "take": torch.tensor([r.take for r in recs]),
            "speaker": [r.speaker for r in recs], "fingerprint": model.fingerprint("audio"),
            "classes": anchor_class_embeddings(model.anchor, CLASSNAMES, TEMPLATES)}  # (C, D)


def enrolled_top1(model_dir: Path, fsdd: Path, speaker: Optional[str], test_takes: int = 5,
                  align: str = "coral") -> float:
    """Emergent audio->text top-1 after enrollment (:func:`binder.enroll`), whose clips' labels
    are never used; the reference is the model's training recordings. A held-out ``speaker``: each
    half of their takes is scored with the speaker enrolled on the other half (reference: the other
    speakers' recordings). None (the takes split): each speaker's takes ``0..test_takes-1`` are
    scored with the speaker enrolled on their other takes (reference: every speaker's other takes)."""
    import torch

    from binder.enrollment import from_embeddings

    e = fsdd_embeddings(model_dir, fsdd)
    z, takes, labels = e["z"], e["take"], e["digit"]
    who = {s: torch.tensor([name == s for name in e["speaker"]]) for s in sorted(set(e["speaker"]))}
    if speaker is None:
        trained = takes >= test_takes
        splits = [(w & ~trained, w & trained, trained) for w in who.values()]
    else:
        mine = who[speaker]
        own = takes[mine].unique()
        first = takes < own[len(own) // 2]  # takes 0-24 of FSDD's 0-49
        splits = [(mine & first, mine & ~first, ~mine), (mine & ~first, mine & first, ~mine)]
    right = n = 0
    for scored, enrolled, reference in splits:
        fix = from_embeddings("audio", z[enrolled], e["fingerprint"], z[reference], align=align)
        right += int(((fix(z[scored]) @ e["classes"].T).argmax(1) == labels[scored]).sum())
        n += int(scored.sum())
    return round(100.0 * right / n, 2)


def _finished(fold_dir: Path) -> Optional[Dict[str, Any]]:
    """A fold's metrics, when a run finished it (bind writes metrics.json last)."""
    path = fold_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("zero_shot") else None


def _zero_shot_row(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The (one) zero-shot row of a fold's or a stage's metrics: top1, top5, n, chance."""
    return next(iter(metrics["zero_shot"].values()))


def table(results: Dict[str, Dict[str, Any]], enroll: Optional[str] = None) -> Dict[str, Any]:
    """``{fold: fold summary}`` -> the study's summary (per speaker, mean, worst, takes; with the
    mean of every training stage when the folds ran ``stages``)."""
    speakers = {k: v for k, v in results.items() if k != TAKES}
    top1 = [v["top1"] for v in speakers.values()]
    out: Dict[str, Any] = {"folds": results}
    if top1:
        worst = min(speakers, key=lambda k: speakers[k]["top1"])
        out.update(mean=round(sum(top1) / len(top1), 2), worst=worst, worst_top1=speakers[worst]["top1"],
                   goals=GOALS, met=bool(sum(top1) / len(top1) >= GOALS["mean"]
                                         and speakers[worst]["top1"] >= GOALS["worst"]))
        names = _stage_names(speakers)
        if names:
            out["stage_means"] = {n: round(sum(v["stages"][n] for v in speakers.values()) / len(speakers), 2)
                                  for n in names}
        if all("enrolled" in v for v in speakers.values()):
            enrolled = {k: v["enrolled"] for k, v in speakers.items()}
            worst = min(enrolled, key=enrolled.get)
            out["enrolled"] = {"align": enroll, "mean": round(sum(enrolled.values()) / len(enrolled), 2),
                               "worst": worst, "worst_top1": enrolled[worst]}
    return out


def _stage_names(results: Dict[str, Dict[str, Any]]) -> List[str]:
    """The stages every fold of ``results`` ran (in order), or none."""
    names = [list(v.get("stages") or {}) for v in results.values()]
    return names[0] if names and all(n == names[0] for n in names) else []


def format_table(summary: Dict[str, Any]) -> str:
    """Markdown: one row per fold (top-1 after each stage too, when the folds ran stages, and after
    enrollment, when it was measured), then the mean and the worst speaker."""
    stages = _stage_names(summary["folds"])
    enrolled = summary.get("enrolled")
    name = f"enrolled ({enrolled['align']})" if enrolled and enrolled.get("align") else "enrolled"
    extra = "".join(f" {n} top-1 |" for n in stages) + (f" {name} top-1 |" if enrolled else "")
    lines = [f"| held out | emergent audio->text top-1 | top-5 | n | training time (s) |{extra}",
             "| --- | ---: | ---: | ---: | ---: |" + " ---: |" * (len(stages) + bool(enrolled))]
    for fold, row in summary["folds"].items():
        name = "takes 0-4 (every speaker)" if fold == TAKES else f"speaker {fold}"
        cells = "".join(f" {row['stages'][n]:.1f} |" for n in stages)
        if enrolled:
            cells += f" {row['enrolled']:.1f} |" if "enrolled" in row else " |"
        lines.append(f"| {name} | {row['top1']:.1f} | {row['top5']:.1f} | {row['n']} | {row.get('seconds', 0):.0f} |"
                     + cells)
    if "mean" in summary:
        cells = "".join(f" {summary['stage_means'][n]:.1f} |" for n in stages if n in summary.get("stage_means", {}))
        cells += f" **{enrolled['mean']:.1f}** |" if enrolled else ""
        lines.append(f"| **mean over speakers** | **{summary['mean']:.1f}** | | | |{cells}")
        cells = " |" * len(stages) + (f" {enrolled['worst_top1']:.1f} ({enrolled['worst']}) |" if enrolled else "")
        lines.append(f"| worst speaker ({summary['worst']}) | {summary['worst_top1']:.1f} | | | |{cells}")
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> Dict[str, Any]:
    """Train and evaluate every fold (reusing finished ones); write the table."""
    from binder.training import bind, modalities_of, require_one

    if require_one(modalities_of(cfg), "leave_one_speaker_out") != "audio":
        raise BinderConfigError("leave_one_speaker_out measures the audio modality: use modality=audio")
    if not str(cfg.data.get("_target_", "")).endswith("DigitsDataModule"):
        raise BinderConfigError("leave_one_speaker_out needs the digits world's FSDD speakers (data=digits)")
    from binder.enrollment import ALIGNS

    options = build_dataclass(SpeakersConfig, cfg.get("speakers") or {}, "speakers")
    if options.enroll not in (None, *ALIGNS):
        raise BinderConfigError(f"speakers.enroll must be one of {list(ALIGNS)} or null, got {options.enroll!r}")
    folds = _speakers(cfg, options.speakers) + ([TAKES] if options.takes else [])
    run_dir = Path(cfg.run_dir).resolve()
    results: Dict[str, Dict[str, Any]] = {}
    for fold in folds:
        metrics = _finished(run_dir / fold)
        start = time.perf_counter()
        if metrics is None:
            log.info("leave-one-speaker-out: fold %s", fold)
            metrics = bind(fold_config(cfg, fold, run_dir))
        else:
            log.info("leave-one-speaker-out: fold %s reused from %s", fold, run_dir / fold)
        row = dict(_zero_shot_row(metrics))
        row["seconds"] = (metrics.get("finetune") or {}).get("fit_seconds", round(time.perf_counter() - start, 1))
        if metrics.get("stages"):  # top-1 after each training stage (base, then each of cfg.stages)
            row["stages"] = {n: _zero_shot_row(s)["top1"] for n, s in metrics["stages"].items()}
        if options.enroll:
            held_out = None if fold == TAKES else fold
            row["enrolled"] = enrolled_top1(Path(metrics["model_dir"]), _fsdd_root(cfg), held_out,
                                            int(cfg.data.get("test_takes", 5)), options.enroll)
        results[fold] = row
        summary = table(results, options.enroll)
        atomic_write(run_dir / "speakers.md", format_table(summary))
        write_metrics(run_dir / "speakers.json", summary)
    log.info("leave-one-speaker-out (emergent audio->text top-1, %%):\n%s", format_table(summary))
    return summary
