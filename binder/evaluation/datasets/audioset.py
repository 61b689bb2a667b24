"""AudioSet: 10 s YouTube segments with multi-label annotations over 527 classes (Gemmeke et al.,
ICASSP 2017; research.google.com/audioset).

Layout (the official CSVs plus your audio): ``<root>/eval_segments.csv`` (and
``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``) with ``#`` comment lines and
rows ``YTID, start_seconds, end_seconds, "mid,mid,..."``; ``<root>/class_labels_indices.csv``
(``index, mid, display_name``); the audio under ``<root>/audio/<split>/``, ``<root>/audio/``,
``<root>/<split>/`` or ``<root>/<split>_segments/`` (option ``audio_dir`` names another folder),
one file per segment named by its YouTube id in any of the common ways (``<id>.wav``,
``Y<id>.wav``, ``<id>_<start>.flac``, ``<id>_<start>_<end>.wav``, ...; any audio format or video
container). AudioSet is distributed as ids only, so segments that could not be downloaded are
expected: each is listed as skipped ("not found"), never silently dropped. Class names are the
index's ``display_name``; labels whose mid the index does not list are counted and ignored.

Protocol (ImageBind, arXiv 2305.05665, Table 2): zero-shot multi-label classification of the
evaluation segments with CLIP's templates, scored as mean average precision over the classes that
have a positive (``mean_average_precision``). Published: ``imagebind_huge`` 17.6 mAP.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

from binder.errors import BinderInputError
from binder.evaluation.base import (
    MULTILABEL,
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
from binder.evaluation.datasets._common import AUDIO_SUFFIXES, find_stem, published, read_audio, youtube_stems
from binder.evaluation.prompts import CLIP_TEMPLATES

CSV_NAMES = {"eval": "eval_segments.csv", "balanced_train": "balanced_train_segments.csv",
             "unbalanced_train": "unbalanced_train_segments.csv"}
SEGMENT_COLUMNS = ["YTID", "start_seconds", "end_seconds", "positive_labels"]


def read_index(path: Path, title: str) -> Tuple[List[str], Dict[str, int]]:
    """``class_labels_indices.csv`` -> (display names by index, mid -> index)."""
    rows = read_csv(path, title, ["index", "mid", "display_name"])
    by_index: Dict[int, Tuple[str, str]] = {}
    for i, row in enumerate(rows):
        try:
            by_index[int(row["index"])] = (row["mid"], row["display_name"])
        except ValueError:
            raise BinderInputError(f"{title}: {str(path)!r} row {i + 2}: index {row['index']!r} is not an "
                                   "integer") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise BinderInputError(f"{title}: {str(path)!r}: indices must run 0..{len(by_index) - 1}")
    names = [by_index[i][1] for i in range(len(by_index))]
    return names, {by_index[i][0]: i for i in range(len(by_index))}


@register_dataset
@dataclass
class AudioSet:
    """AudioSet zero-shot multi-label classification (mAP)."""

    name: ClassVar[str] = "audioset"
    title: ClassVar[str] = "AudioSet"
    task: ClassVar[str] = MULTILABEL
    modality: ClassVar[str] = "audio"
    splits: ClassVar[Tuple[str, ...]] = tuple(CSV_NAMES)
    default_split: ClassVar[str] = "eval"
    layout: ClassVar[str] = ("<root>/eval_segments.csv (# comments; YTID, start_seconds, end_seconds, "
                             "positive_labels), "
                             "<root>/class_labels_indices.csv (index, mid, display_name) and the audio under "
                             "<root>/audio/[<split>/] named by YouTube id")
    audio_dir: str = ""  # folder of the segments' audio (default: searched as described above)

    def _audio_folder(self, root: Path, split: str) -> Path:
        if self.audio_dir:
            return require(Path(self.audio_dir).expanduser(), self.title, "the audio folder (audio_dir)", self.layout,
                           folder=True)
        for c in (root / "audio" / split, root / "audio", root / split, root / f"{split}_segments"):
            if c.is_dir():
                return c
        raise BinderInputError(f"{self.title}: no audio folder under {str(root)!r}: looked for audio/{split}/, audio/, "
                               f"{split}/ and {split}_segments/; expected {self.layout}")

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        segments = require(root / CSV_NAMES[split], self.title, f"the {split} segment list", self.layout)
        index_csv = require(root / "class_labels_indices.csv", self.title, "the class index", self.layout)
        classnames, mid_index = read_index(index_csv, self.title)
        rows = read_csv(segments, self.title, SEGMENT_COLUMNS, header=False, columns=SEGMENT_COLUMNS, comment="#")
        files = index_folder(self._audio_folder(root, split), AUDIO_SUFFIXES)
        records, skipped, unknown = [], [], 0
        for i, row in enumerate(rows):
            try:
                start, end = float(row["start_seconds"]), float(row["end_seconds"])
            except ValueError:
                raise BinderInputError(f"{self.title}: {CSV_NAMES[split]} row {i + 1}: start/end are not numbers: "
                                       f"{row}") from None
            mids = [m.strip() for m in row["positive_labels"].split(",") if m.strip()]
            labels = sorted({mid_index[m] for m in mids if m in mid_index})
            unknown += sum(m not in mid_index for m in mids)
            seg_id = f"{row['YTID']}_{start:.3f}"
            path = find_stem(files, youtube_stems(row["YTID"], start, end))
            if path is None:
                skipped.append((seg_id, "not found in the audio folder"))
            elif not labels:
                skipped.append((seg_id, "none of its labels is in class_labels_indices.csv"))
            else:
                records.append(Record(id=seg_id, source=str(path), labels=labels, path=str(path)))
        protocol = ProtocolInfo(
            name="audioset-imagebind", version="1", source=f"{__name__}: ImageBind Table 2; AudioSet (Gemmeke 2017)",
            choices={"metric": "mean average precision over classes with a positive",
                     "prompts": "CLIP's 80 templates, ensembled", "unknown_labels_ignored": unknown},
            published=published("mean_average_precision", 17.6))
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=classnames,
                     templates=list(CLIP_TEMPLATES), skipped=skipped, files=[str(segments), str(index_csv)])

    def load(self, record: Record) -> Any:
        return read_audio(record.source)
