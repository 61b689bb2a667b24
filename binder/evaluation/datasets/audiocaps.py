"""AudioCaps: AudioSet clips with human captions (Kim et al., NAACL 2019; audiocaps.github.io).

Layout (the repository's CSVs plus your audio): ``<root>/<split>.csv`` (``train``, ``val``,
``test``) with columns ``audiocap_id, youtube_id, start_time, caption`` (the test and val splits
give five rows per clip), and the clips under ``<root>/audio/<split>/``, ``<root>/<split>/`` or
``<root>/audio/`` (option ``audio_dir``), named by YouTube id in any of the common ways
(``<id>.wav``, ``Y<id>.wav``, ``<id>_<start>.wav``) or by ``audiocap_id``. Clips the copy lacks
are listed as skipped.

Protocol (ImageBind, arXiv 2305.05665, sec. 4.1): zero-shot text -> audio retrieval on the test
split; every caption is a query; a clip (one YouTube segment) gathers all its captions.
Published: ``imagebind_huge`` text -> audio R@1 9.3, R@10 42.3.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

from binder.errors import BinderInputError
from binder.evaluation.base import (
    RETRIEVAL,
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


@register_dataset
@dataclass
class AudioCaps:
    """AudioCaps zero-shot audio <-> text retrieval."""

    name: ClassVar[str] = "audiocaps"
    title: ClassVar[str] = "AudioCaps"
    task: ClassVar[str] = RETRIEVAL
    modality: ClassVar[str] = "audio"
    splits: ClassVar[Tuple[str, ...]] = ("test", "val", "train")
    default_split: ClassVar[str] = "test"
    layout: ClassVar[str] = ("<root>/<split>.csv (audiocap_id, youtube_id, start_time, caption) and the clips in "
                             "<root>/audio/<split>/ named by YouTube id")
    audio_dir: str = ""  # folder of the clips (default: audio/<split>/, <split>/ or audio/ under the root)

    def _audio(self, root: Path, split: str) -> Path:
        if self.audio_dir:
            return require(Path(self.audio_dir).expanduser(), self.title, "the clips (audio_dir)", self.layout, True)
        for c in (root / "audio" / split, root / split, root / "audio"):
            if c.is_dir():
                return c
        raise BinderInputError(f"{self.title}: no audio folder under {str(root)!r}: looked for audio/{split}/, "
                               f"{split}/ "
                               f"and audio/; expected {self.layout}")

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        meta = require(root / f"{split}.csv", self.title, "the captions", self.layout)
        rows = read_csv(meta, self.title, ["audiocap_id", "youtube_id", "start_time", "caption"])
        files = index_folder(self._audio(root, split), AUDIO_SUFFIXES)
        clips: Dict[Tuple[str, float], List[Dict[str, str]]] = {}
        for i, row in enumerate(rows):
            try:
                key = (row["youtube_id"], float(row["start_time"]))
            except ValueError:
                raise BinderInputError(f"{self.title}: {meta.name} row {i + 2}: start_time {row['start_time']!r} "
                                       "is not a number") from None
            clips.setdefault(key, []).append(row)
        records, skipped = [], []
        for (ytid, start), group in clips.items():
            clip_id = f"{ytid}_{int(start)}"
            stems = youtube_stems(ytid, start) + [r["audiocap_id"] for r in group]
            path = find_stem(files, stems)
            if path is None:
                skipped.append((clip_id, "not found in the audio folder"))
                continue
            records.append(Record(id=clip_id, source=str(path), captions=[r["caption"] for r in group], path=str(path)))
        protocol = ProtocolInfo(
            name="audiocaps-imagebind", version="1", source=f"{__name__}: ImageBind sec. 4.1; AudioCaps (Kim 2019)",
            choices={"queries": "every caption is a query; a clip gathers the captions of its "
                                "(youtube_id, start_time)"},
            published=published("audio_retrieval_recall@1", 9.3, "sec. 4.1 (R@10 42.3)"))
        return Split(self.name, split, self.modality, self.task, records, protocol, skipped=skipped, files=[str(meta)])

    def load(self, record: Record) -> Any:
        return read_audio(record.source)
