"""Clotho v2: 15-30 s recordings with five captions each (Drossos et al., ICASSP 2020;
zenodo.org/record/4783391).

Layout (the official archives extracted in one folder): ``<root>/clotho_captions_<split>.csv``
with columns ``file_name, caption_1 ... caption_5`` and the recordings of the split under
``<root>/<split>/`` (``clotho_audio_<split>.7z`` extracts there; ``<root>/clotho_audio_<split>/``
is found too). Splits: development, validation, evaluation.

Protocol (ImageBind, arXiv 2305.05665, sec. 4.1): zero-shot text -> audio retrieval on the
evaluation split, R@1 and R@10; each caption is one query whose target is its recording; for
audio -> text, a recording is found when any of its captions is. Published: ``imagebind_huge``
text -> audio R@1 6.0, R@10 28.4.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Tuple

from binder.errors import BinderInputError
from binder.evaluation.base import (
    RETRIEVAL,
    ProtocolInfo,
    Record,
    Split,
    check_root,
    check_split,
    first_existing,
    read_csv,
    register_dataset,
    require,
)
from binder.evaluation.datasets._common import published, read_audio


@register_dataset
@dataclass
class Clotho:
    """Clotho v2 zero-shot audio <-> text retrieval."""

    name: ClassVar[str] = "clotho"
    title: ClassVar[str] = "Clotho"
    task: ClassVar[str] = RETRIEVAL
    modality: ClassVar[str] = "audio"
    splits: ClassVar[Tuple[str, ...]] = ("evaluation", "validation", "development")
    default_split: ClassVar[str] = "evaluation"
    layout: ClassVar[str] = ("<root>/clotho_captions_<split>.csv (file_name, caption_1..caption_5) and the "
                             "recordings in <root>/<split>/")

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        meta = require(root / f"clotho_captions_{split}.csv", self.title, "the captions", self.layout)
        audio = first_existing([root / split, root / f"clotho_audio_{split}"], self.title, "the recordings",
                               self.layout)
        rows = read_csv(meta, self.title, ["file_name", "caption_1"])
        columns = [c for c in rows[0] if c.startswith("caption_")] if rows else []
        records, skipped = [], []
        for i, row in enumerate(rows):
            captions = [row[c] for c in columns if row.get(c)]
            if not captions:
                raise BinderInputError(f"{self.title}: {meta.name} row {i + 2} ({row['file_name']}) has no caption")
            path = audio / row["file_name"]
            if not path.is_file():
                skipped.append((row["file_name"], f"listed in {meta.name} but not found in {audio.name}/"))
                continue
            records.append(Record(id=row["file_name"], source=str(path), captions=captions, path=str(path)))
        protocol = ProtocolInfo(
            name="clotho-imagebind", version="1", source=f"{__name__}: ImageBind sec. 4.1; Clotho v2 (Drossos 2020)",
            choices={"queries": "every caption is a query (text -> audio); audio -> text: any of the item's captions"},
            published=published("audio_retrieval_recall@1", 6.0, "sec. 4.1 (R@10 28.4)"))
        return Split(self.name, split, self.modality, self.task, records, protocol, skipped=skipped, files=[str(meta)])

    def load(self, record: Record) -> Any:
        return read_audio(record.source)
