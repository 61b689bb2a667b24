"""Kinetics-400: 10 s YouTube clips of 400 human actions (Kay et al., arXiv 1705.06950;
github.com/cvdfoundation/kinetics-dataset).

Layout (the CVDF release, or the ActivityNet downloader's): ``<root>/annotations/<split>.csv``
(or ``<root>/<split>.csv``, ``kinetics400/<split>.csv``) with columns ``label, youtube_id,
time_start, time_end, split`` and the clips under ``<root>/<split>/``, flat or in one folder per
label, named ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4``. Class names are the CSV's
labels (sorted). Clips the copy lacks are listed as skipped.

Protocol (ImageBind, arXiv 2305.05665, Table 2; the frozen OpenCLIP image tower): zero-shot
classification of the validation split with CLIP's templates, each video embedded by the model's
video route (ImageBind: 5 clips of 2 s, 2 frames each, 3 spatial crops, averaged). Published:
``imagebind_huge`` 50.0 top-1.
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
    first_existing,
    index_folder,
    read_csv,
    register_dataset,
)
from binder.evaluation.datasets._common import VIDEO_SUFFIXES, display, find_stem, published
from binder.evaluation.prompts import CLIP_TEMPLATES


@register_dataset
@dataclass
class Kinetics400:
    """Kinetics-400 zero-shot action classification from video."""

    name: ClassVar[str] = "kinetics400"
    title: ClassVar[str] = "Kinetics-400"
    task: ClassVar[str] = CLASSIFICATION
    modality: ClassVar[str] = "video"
    splits: ClassVar[Tuple[str, ...]] = ("val", "test", "train")
    default_split: ClassVar[str] = "val"
    layout: ClassVar[str] = ("<root>/annotations/<split>.csv (label, youtube_id, time_start, time_end, split) and "
                             "<root>/<split>/[<label>/]<youtube_id>_<start:06d>_<end:06d>.mp4")

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        meta = first_existing([root / "annotations" / f"{split}.csv", root / f"{split}.csv",
                               root / "kinetics400" / f"{split}.csv"], self.title, f"the {split} annotations",
                              self.layout)
        videos = first_existing([root / split, root / "videos" / split], self.title, "the video folder", self.layout)
        rows = read_csv(meta, self.title, ["label", "youtube_id", "time_start", "time_end"])
        classnames = sorted({display(r["label"]) for r in rows})
        files = index_folder(videos, VIDEO_SUFFIXES)
        records, skipped = [], []
        for i, row in enumerate(rows):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError:
                raise BinderInputError(f"{self.title}: {meta.name} row {i + 2}: time_start/time_end are not numbers")
            ytid = row["youtube_id"]
            clip_id = f"{ytid}_{start:06d}_{end:06d}"
            path = find_stem(files, [clip_id, ytid, f"{ytid}_{start}_{end}"])
            if path is None:
                skipped.append((clip_id, f"not found in {videos.name}/"))
                continue
            records.append(Record(id=clip_id, source=str(path), label=classnames.index(display(row["label"])),
                                  path=str(path)))
        protocol = ProtocolInfo(
            name="kinetics400-imagebind", version="1", source=f"{__name__}: ImageBind Table 2; Kinetics-400 (Kay 2017)",
            choices={"prompts": "CLIP's 80 templates", "video": "the model's video route"},
            published=published("acc1", 50.0))
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=classnames,
                     templates=list(CLIP_TEMPLATES), skipped=skipped, files=[str(meta)],
                     probe_train="train" if split != "train" else None)

    def load(self, record: Record) -> Any:
        return record.source
