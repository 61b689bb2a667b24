"""SUN RGB-D: 10,335 RGB-D frames from four sensors with scene labels (Song et al., CVPR 2015;
rgbd.cs.princeton.edu).

Layout (the official ``SUNRGBD.zip`` and ``SUNRGBDtoolbox.zip`` extracted side by side or the
toolbox inside): ``<root>/<sensor>/.../<frame folder>/`` with ``scene.txt`` (the scene label),
``depth_bfx/<name>.png`` (refined depth) and ``depth/<name>.png`` (raw), and
``SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat`` with the official split (``alltrain`` 5,285,
``alltest`` 5,050 frame folders, given as paths ending in ``SUNRGBD/<sensor>/...``). Depth PNGs
hold millimetres rotated by 3 bits (the toolbox's ``read3dPoints``: ``bitor(bitshift(d, -3),
bitshift(d, 13))``), read here the same way and capped at 8 m as the toolbox does.

Protocol (ImageBind, arXiv 2305.05665, sec. 4.1 and appendix B, after Omnivore): depth only
(disparity through the model's depth preprocessing), the test split ("~5K val"), the dataset's 19
scene classes (the SUN RGB-D paper's scene classification set, categories with more than 80
frames); frames of other scenes are not scored (counted in the JSON). Option ``depth``: ``bfx``
(refined, default) or ``raw``. Published: ``imagebind_huge`` 35.1 top-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, List, Tuple

import numpy as np

from binder.errors import BinderInputError, reading
from binder.evaluation.base import (
    CLASSIFICATION,
    ProtocolInfo,
    Record,
    Split,
    check_root,
    check_split,
    first_existing,
    register_dataset,
)
from binder.evaluation.datasets._common import display, published
from binder.evaluation.prompts import CLIP_TEMPLATES

SCENES = ("bathroom", "bedroom", "classroom", "computer_room", "conference_room", "corridor", "dining_area",
          "dining_room", "discussion_area", "furniture_store", "home_office", "kitchen", "lab", "lecture_theatre",
          "library", "living_room", "office", "rest_space", "study_space")
SPLIT_KEYS = {"test": "alltest", "train": "alltrain"}
MAX_DEPTH_M = 8.0


def read_split_paths(path: Path, key: str) -> List[str]:
    """Frame folders of one split from ``allsplit.mat``, as paths relative to ``SUNRGBD/``."""
    with reading(path, "SUN RGB-D split file", "the toolbox's allsplit.mat (alltrain, alltest)"):
        from scipy.io import loadmat

        data = loadmat(str(path))
    if key not in data:
        raise BinderInputError(f"SUN RGB-D: {str(path)!r} has no {key!r}; expected allsplit.mat with alltrain, alltest")
    out = []
    for cell in np.asarray(data[key]).reshape(-1):
        text = str(np.asarray(cell).reshape(-1)[0]) if np.asarray(cell).size else ""
        rel = text.split("SUNRGBD/", 1)[-1].strip("/")
        if rel:
            out.append(rel)
    return out


def read_depth_png(path: "str | Path") -> np.ndarray:
    """A SUN RGB-D depth PNG -> metres (H, W) float32, 0 where missing, capped at 8 m."""
    from PIL import Image

    with reading(path, "SUN RGB-D depth file", "a 16-bit PNG"):
        raw = np.asarray(Image.open(path)).astype(np.uint16)
    mm = (raw >> 3) | (raw << 13)  # the toolbox's circular 3-bit shift, in uint16
    return np.minimum(mm.astype(np.float32) / 1000.0, MAX_DEPTH_M)


@register_dataset
@dataclass
class SUNRGBD:
    """SUN RGB-D zero-shot scene classification from depth (19 classes)."""

    name: ClassVar[str] = "sunrgbd"
    title: ClassVar[str] = "SUN RGB-D"
    task: ClassVar[str] = CLASSIFICATION
    modality: ClassVar[str] = "depth"
    splits: ClassVar[Tuple[str, ...]] = ("test", "train")
    default_split: ClassVar[str] = "test"
    layout: ClassVar[str] = ("<root>/<sensor>/.../<frame>/{scene.txt, depth_bfx/*.png, depth/*.png} and "
                             "SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat (inside or beside <root>)")
    depth: str = "bfx"  # bfx (refined depth, default) | raw

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        if self.depth not in ("bfx", "raw"):
            raise BinderInputError(f"{self.title}: option depth must be 'bfx' or 'raw', got {self.depth!r}")
        rel = Path("SUNRGBDtoolbox") / "traintestSUNRGBD" / "allsplit.mat"
        split_file = first_existing([root / rel, root.parent / rel], self.title, "the official split", self.layout)
        records, skipped, other = [], [], 0
        for frame in read_split_paths(split_file, SPLIT_KEYS[split]):
            folder = root / frame
            scene_file = folder / "scene.txt"
            if not scene_file.is_file():
                skipped.append((frame, "frame folder or its scene.txt not found"))
                continue
            scene = scene_file.read_text(errors="replace").strip()
            if scene not in SCENES:
                other += 1
                continue
            pngs = sorted((folder / ("depth_bfx" if self.depth == "bfx" else "depth")).glob("*.png"))
            if not pngs:
                skipped.append((frame, f"no depth PNG in {'depth_bfx' if self.depth == 'bfx' else 'depth'}/"))
                continue
            records.append(Record(id=frame, source=str(pngs[0]), label=SCENES.index(scene), path=str(pngs[0])))
        protocol = ProtocolInfo(
            name="sunrgbd-imagebind", version="1", source=f"{__name__}: ImageBind appendix B; SUN RGB-D (Song 2015)",
            choices={"split": f"allsplit.mat {SPLIT_KEYS[split]}", "classes": "the 19 scene classes",
                     "frames_of_other_scenes_not_scored": other, "depth": self.depth,
                     "input": "metric depth -> the model's disparity preprocessing", "prompts": "CLIP's 80 templates"},
            published=published("acc1", 35.1))
        return Split(self.name, split, self.modality, self.task, records, protocol,
                     classnames=[display(s) for s in SCENES], templates=list(CLIP_TEMPLATES), skipped=skipped,
                     files=[str(split_file)], probe_train="train" if split == "test" else None)

    def load(self, record: Record) -> Any:
        return read_depth_png(record.source)
