"""VGGSound: ~200k 10 s YouTube clips in 309 sound classes (Chen et al., ICASSP 2020;
www.robots.ox.ac.uk/~vgg/data/vggsound).

Layout (the official release): ``<root>/vggsound.csv`` without a header, rows
``YouTube ID, start seconds, label, train|test``, and the clips under ``<root>/video/``,
``<root>/audio/`` or ``<root>/<split>/`` (option ``media_dir``) named ``<id>_<start:06d>.mp4`` as
the release names them (other common namings, and audio files, are found too); the audio track of
a video container is decoded with PyAV. Class names are the CSV's labels (sorted; the whole CSV,
so both splits share the class list). Clips the copy lacks are listed as skipped.

Protocol (ImageBind, arXiv 2305.05665, Table 2): zero-shot classification of the test split with
CLIP's templates, top-1. Published: ``imagebind_huge`` 27.8.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Tuple

from binder.errors import BinderInputError
from binder.evaluation.base import (
    CLASSIFICATION,
    ProtocolInfo,
    Record,
    Split,
    check_root,
    check_split,
    index_folder,
    read_csv,
    register_dataset,
    require,
)
from binder.evaluation.datasets._common import AUDIO_SUFFIXES, display, find_stem, published, read_audio, youtube_stems
from binder.evaluation.prompts import CLIP_TEMPLATES

COLUMNS = ["ytid", "start", "label", "split"]


@register_dataset
@dataclass
class VGGSound:
    """VGGSound zero-shot classification."""

    name: ClassVar[str] = "vggsound"
    title: ClassVar[str] = "VGGSound"
    task: ClassVar[str] = CLASSIFICATION
    modality: ClassVar[str] = "audio"
    splits: ClassVar[Tuple[str, ...]] = ("test", "train")
    default_split: ClassVar[str] = "test"
    layout: ClassVar[str] = ("<root>/vggsound.csv (no header: YouTube ID, start seconds, label, train|test) and "
                             "<root>/video/<id>_<start:06d>.mp4")
    media_dir: str = ""  # folder of the clips (default: video/, audio/ or <split>/ under the root)

    def _media(self, root: Path, split: str) -> Path:
        if self.media_dir:
            return require(Path(self.media_dir).expanduser(), self.title, "the clips (media_dir)", self.layout, True)
        for c in (root / "video", root / "audio", root / split):
            if c.is_dir():
                return c
        raise BinderInputError(f"{self.title}: no clip folder under {str(root)!r}: looked for video/, audio/ and "
                               f"{split}/; expected {self.layout}")

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        meta = require(root / "vggsound.csv", self.title, "the clip list", self.layout)
        rows = read_csv(meta, self.title, COLUMNS, header=False, columns=COLUMNS)
        classnames = sorted({display(r["label"]) for r in rows})
        index = {c: i for i, c in enumerate(classnames)}
        files = index_folder(self._media(root, split), AUDIO_SUFFIXES)
        records, skipped = [], []
        for i, row in enumerate(rows):
            if row["split"] != split:
                continue
            try:
                start = float(row["start"])
            except ValueError:
                raise BinderInputError(f"{self.title}: vggsound.csv row {i + 1}: start {row['start']!r} is not a "
                                       "number")
            clip_id = f"{row['ytid']}_{int(start):06d}"
            path = find_stem(files, youtube_stems(row["ytid"], start))
            if path is None:
                skipped.append((clip_id, "not found in the clip folder"))
                continue
            records.append(Record(id=clip_id, source=str(path), label=index[display(row["label"])], path=str(path)))
        protocol = ProtocolInfo(
            name="vggsound-imagebind", version="1", source=f"{__name__}: ImageBind Table 2; VGGSound (Chen 2020)",
            choices={"prompts": "CLIP's 80 templates, ensembled", "audio": "the clip's audio track, whole"},
            published=published("acc1", 27.8))
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=classnames,
                     templates=list(CLIP_TEMPLATES), skipped=skipped, files=[str(meta)],
                     probe_train="train" if split == "test" else None)

    def load(self, record: Record) -> Any:
        return read_audio(record.source)
