"""MSR-VTT: 10k web video clips with 20 captions each (Xu et al., CVPR 2016).

Layout (the usual distribution, as CLIP4Clip and the CLIP_benchmark video tools read it):
``<root>/msrvtt_data/MSRVTT_JSFUSION_test.csv`` (the 1k-A test list with one caption per video:
columns ``key, vid_key, video_id, sentence``; ``<root>/MSRVTT_JSFUSION_test.csv`` is found too)
and the videos ``<root>/MSRVTT/videos/all/<video_id>.mp4`` (or ``<root>/videos/all/``,
``<root>/videos/``). Option ``captions=all`` instead uses every caption of the 1k-A videos from
``msrvtt_data/MSRVTT_data.json`` (``sentences``: ``video_id``, ``caption``); that is not the 1k-A
protocol and is named so in the JSON.

Protocol (ImageBind, arXiv 2305.05665, Table 2; the frozen OpenCLIP image tower): the 1k-A split
(JSFusion's 1,000 test videos, one caption each), text -> video R@1 (``video_retrieval_recall@1``),
each video embedded by the model's video route. Published: ``imagebind_huge`` 36.1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

from binder.errors import BinderInputError, reading
from binder.evaluation.base import (
    RETRIEVAL,
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
from binder.evaluation.datasets._common import VIDEO_SUFFIXES, published


@register_dataset
@dataclass
class MSRVTT:
    """MSR-VTT 1k-A zero-shot text <-> video retrieval."""

    name: ClassVar[str] = "msrvtt"
    title: ClassVar[str] = "MSR-VTT"
    task: ClassVar[str] = RETRIEVAL
    modality: ClassVar[str] = "video"
    splits: ClassVar[Tuple[str, ...]] = ("test-1k",)
    default_split: ClassVar[str] = "test-1k"
    layout: ClassVar[str] = ("<root>/msrvtt_data/MSRVTT_JSFUSION_test.csv (key, vid_key, video_id, sentence) and "
                             "<root>/MSRVTT/videos/all/<video_id>.mp4")
    captions: str = "jsfusion"  # jsfusion: the 1k-A caption per video | all: every caption from MSRVTT_data.json

    def _captions(self, root: Path, rows: List[Dict[str, str]]) -> Dict[str, List[str]]:
        if self.captions == "jsfusion":
            out: Dict[str, List[str]] = {}
            for r in rows:
                out.setdefault(r["video_id"], []).append(r["sentence"])
            return out
        if self.captions != "all":
            raise BinderInputError(f"{self.title}: option captions must be 'jsfusion' or 'all', got {self.captions!r}")
        path = first_existing([root / "msrvtt_data" / "MSRVTT_data.json", root / "MSRVTT_data.json"], self.title,
                              "the captions (captions=all)", self.layout)
        with reading(path, "MSR-VTT captions", "MSRVTT_data.json with a 'sentences' list"):
            sentences = json.loads(path.read_text(encoding="utf-8"))["sentences"]
        wanted = {r["video_id"] for r in rows}
        out = {v: [] for v in wanted}
        for s in sentences:
            if s.get("video_id") in wanted:
                out[s["video_id"]].append(s["caption"])
        return out

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        meta = first_existing([root / "msrvtt_data" / "MSRVTT_JSFUSION_test.csv", root / "MSRVTT_JSFUSION_test.csv"],
                              self.title, "the 1k-A test list", self.layout)
        videos = first_existing([root / "MSRVTT" / "videos" / "all", root / "videos" / "all", root / "videos"],
                                self.title, "the video folder", self.layout)
        rows = read_csv(meta, self.title, ["video_id", "sentence"])
        files = index_folder(videos, VIDEO_SUFFIXES)
        records, skipped = [], []
        for vid, caps in self._captions(root, rows).items():
            if vid not in files:
                skipped.append((vid, f"not found in {videos.name}/"))
            elif not caps:
                skipped.append((vid, "no caption"))
            else:
                records.append(Record(id=vid, source=str(files[vid]), captions=caps, path=str(files[vid])))
        name = "msrvtt-1k-A-imagebind" if self.captions == "jsfusion" else "msrvtt-1k-A-videos-all-captions"
        protocol = ProtocolInfo(
            name=name, version="1", source=f"{__name__}: ImageBind Table 2; MSR-VTT (Xu 2016), 1k-A (JSFusion)",
            choices={"captions": self.captions, "video": "the model's video route"},
            published=published("video_retrieval_recall@1", 36.1) if self.captions == "jsfusion" else None)
        return Split(self.name, split, self.modality, self.task, records, protocol, skipped=skipped, files=[str(meta)])

    def load(self, record: Record) -> Any:
        return record.source
