"""ESC-50: 2,000 five-second environmental recordings in 50 classes and 5 folds (Piczak, ACM MM
2015; github.com/karolpiczak/ESC-50).

Layout (the repository's archive): ``<root>/meta/esc50.csv`` with columns ``filename, fold,
target, category, esc10, src_file, take`` and ``<root>/audio/<filename>`` (44.1 kHz mono WAV).
Class names are the CSV's ``category`` per ``target`` index with ``_`` read as a space
("dog", "crackling fire"), so a re-labelled or extended copy works.

Protocol (ImageBind, arXiv 2305.05665, sec. 4.1 and appendix B): zero-shot on all five official
folds (400 clips each), each fold scored on its own and ``acc1`` reported as the mean of the five;
CLIP's default templates; each recording embedded as the model's preprocessing says (ImageBind:
three 2 s clips at 16 kHz, 128 mel bins, averaged). Few-shot probes (Fig. 3) test each fold with
shots drawn from the other four. Published: ``imagebind_huge`` 66.9 top-1 (Table 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

from binder.errors import BinderInputError
from binder.evaluation.base import (
    CLASSIFICATION,
    ProtocolInfo,
    Record,
    Split,
    check_root,
    check_split,
    read_csv,
    register_dataset,
    require,
)
from binder.evaluation.datasets._common import display, published, read_audio
from binder.evaluation.prompts import CLIP_TEMPLATES

FOLDS = ("fold1", "fold2", "fold3", "fold4", "fold5")


def classnames_from(rows: List[Dict[str, str]], where: str, title: str) -> List[str]:
    """Class names by ``target`` index from the ``category`` column (each index named once)."""
    names: Dict[int, str] = {}
    for i, row in enumerate(rows):
        try:
            target = int(row["target"])
        except ValueError:
            raise BinderInputError(f"{title}: {where} row {i + 2}: target {row['target']!r} is not an "
                                   "integer") from None
        name = display(row["category"])
        if names.setdefault(target, name) != name:
            raise BinderInputError(f"{title}: {where}: target {target} is both {names[target]!r} and {name!r}")
    missing = [t for t in range(max(names) + 1) if t not in names] if names else []
    if missing:
        raise BinderInputError(f"{title}: {where}: no row names target(s) {missing[:5]}; targets must run 0..N-1")
    return [names[t] for t in range(len(names))]


@register_dataset
@dataclass
class ESC50:
    """ESC-50 zero-shot classification (options: none beyond the split)."""

    name: ClassVar[str] = "esc50"
    title: ClassVar[str] = "ESC-50"
    task: ClassVar[str] = CLASSIFICATION
    modality: ClassVar[str] = "audio"
    splits: ClassVar[Tuple[str, ...]] = ("all", *FOLDS)
    default_split: ClassVar[str] = "all"
    layout: ClassVar[str] = "<root>/meta/esc50.csv (filename, fold, target, category, ...) and <root>/audio/<filename>"

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        meta = require(root / "meta" / "esc50.csv", self.title, "the metadata table", self.layout)
        audio = require(root / "audio", self.title, "the recordings", self.layout, folder=True)
        rows = read_csv(meta, self.title, ["filename", "fold", "target", "category"])
        classnames = classnames_from(rows, "meta/esc50.csv", self.title)
        records, skipped = [], []
        for i, row in enumerate(rows):
            fold = f"fold{row['fold']}"
            if fold not in FOLDS:
                raise BinderInputError(f"{self.title}: meta/esc50.csv row {i + 2}: fold {row['fold']!r} is not 1-5")
            if split != "all" and fold != split:
                continue
            path = audio / row["filename"]
            if not path.is_file():
                skipped.append((row["filename"], "listed in meta/esc50.csv but not found in audio/"))
                continue
            records.append(Record(id=row["filename"], source=str(path), label=int(row["target"]), group=fold,
                                  path=str(path)))
        protocol = ProtocolInfo(
            name="esc50-imagebind", version="1", source=f"{__name__}: ImageBind appendix B; ESC-50 (Piczak 2015)",
            choices={"folds": "each official fold scored on its own; metrics are the mean over folds",
                     "prompts": "CLIP's 80 templates, ensembled", "clips": "the model's audio preprocessing"},
            published=published("acc1", 66.9))
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=classnames,
                     templates=list(CLIP_TEMPLATES), skipped=skipped, files=[str(meta)])

    def load(self, record: Record) -> Any:
        return read_audio(record.source)
