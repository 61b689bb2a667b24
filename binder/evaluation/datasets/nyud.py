"""NYU-Depth v2: 1,449 labelled Kinect RGB-D frames of indoor scenes (Silberman et al., ECCV 2012;
cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html).

Layout (the official downloads): ``<root>/nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5:
``depths`` in metres stored as (N, W, H), ``sceneTypes`` a cell of strings such as
``living_room``) and ``<root>/splits.mat`` (the standard split: ``trainNdxs`` 795 and
``testNdxs`` 654, 1-based indices into the labelled set).

Protocol (ImageBind, arXiv 2305.05665, sec. 4.1 and appendix B, after Omnivore): depth only,
turned into disparity by the model's depth preprocessing (Kinect focal length x baseline / depth);
10 scene classes: the nine frequent scene types (bathroom, bedroom, bookstore, classroom, dining
room, home office, kitchen, living room, office) and "other", which scores as the maximum cosine
over the names of its member scene types (the other 18 scene types of the file; option ``other``:
``max``, or ``name`` to score it as the single name ``other_name``, LanguageBind's "others").
The paper gives 653 samples in one place and "794 val" in another; binder uses the official
``testNdxs`` (654; option ``split=train`` for the 795). Published: ``imagebind_huge`` 54.0 top-1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

import numpy as np

from binder.errors import BinderInputError, reading
from binder.evaluation.base import (
    CLASSIFICATION,
    ProtocolInfo,
    Record,
    Split,
    check_root,
    check_split,
    register_dataset,
    require,
)
from binder.evaluation.datasets._common import display, published
from binder.evaluation.prompts import CLIP_TEMPLATES

MAIN = ("bathroom", "bedroom", "bookstore", "classroom", "dining_room", "home_office", "kitchen", "living_room",
        "office")
LABELED, SPLITS = "nyu_depth_v2_labeled.mat", "splits.mat"
_OPEN: Dict[Tuple[int, str], Any] = {}  # (process id, path) -> open h5py file, one per worker process


def open_h5(path: str) -> Any:
    """The labelled .mat opened read-only with h5py (kept open per process)."""
    import h5py

    key = (os.getpid(), path)
    if key not in _OPEN:
        with reading(path, "NYU-D file", "a MATLAB v7.3 (HDF5) .mat file"):
            _OPEN[key] = h5py.File(path, "r")
    return _OPEN[key]


def scene_types(f: Any, path: str) -> List[str]:
    """The ``sceneTypes`` cell array of the labelled .mat as strings."""
    if "sceneTypes" not in f or "depths" not in f:
        raise BinderInputError(f"NYU-D: {path!r} lacks 'sceneTypes' or 'depths'; expected the official labelled "
                               f"dataset (found {sorted(f.keys())[:8]})")
    refs = np.asarray(f["sceneTypes"]).reshape(-1)
    return ["".join(chr(int(c)) for c in np.asarray(f[r]).reshape(-1)) for r in refs]


def read_indices(path: Path, split: str) -> np.ndarray:
    """0-based indices of ``split`` from ``splits.mat`` (MATLAB v5 via scipy, or v7.3 via h5py)."""
    key = {"test": "testNdxs", "train": "trainNdxs"}[split]
    with reading(path, "NYU-D split file", "the official splits.mat (trainNdxs, testNdxs)"):
        try:
            from scipy.io import loadmat

            data = loadmat(str(path))
        except NotImplementedError:  # a v7.3 file
            import h5py

            with h5py.File(path, "r") as f:
                data = {k: np.asarray(f[k]) for k in f.keys()}
    if key not in data:
        raise BinderInputError(f"NYU-D: {str(path)!r} has no {key!r}; expected the official splits.mat with trainNdxs "
                               f"and testNdxs")
    return np.asarray(data[key]).reshape(-1).astype(np.int64) - 1


@register_dataset
@dataclass
class NYUDepth:
    """NYU-Depth v2 zero-shot scene classification from depth."""

    name: ClassVar[str] = "nyud"
    title: ClassVar[str] = "NYU-Depth v2"
    task: ClassVar[str] = CLASSIFICATION
    modality: ClassVar[str] = "depth"
    splits: ClassVar[Tuple[str, ...]] = ("test", "train")
    default_split: ClassVar[str] = "test"
    layout: ClassVar[str] = f"<root>/{LABELED} (MATLAB v7.3 / HDF5) and <root>/{SPLITS} (trainNdxs, testNdxs)"
    other: str = "max"  # how "other" scores: max over its member scene types | name (the single name other_name)
    other_name: str = "other"

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        if self.other not in ("max", "name"):
            raise BinderInputError(f"{self.title}: option other must be 'max' or 'name', got {self.other!r}")
        labeled = str(require(root / LABELED, self.title, "the labelled set", self.layout))
        splits = require(root / SPLITS, self.title, "the standard split", self.layout)
        scenes = scene_types(open_h5(labeled), labeled)
        indices = read_indices(splits, split)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(scenes)):
            raise BinderInputError(f"{self.title}: {SPLITS} indexes beyond the {len(scenes)} labelled frames")
        members = sorted({s for s in scenes if s not in MAIN})
        classnames = [display(s) for s in MAIN] + [self.other_name]
        groups = {len(MAIN): [display(s) for s in members]} if self.other == "max" and members else {}
        records = [Record(id=f"{i + 1}", source=(labeled, int(i)), path=labeled,
                          label=MAIN.index(scenes[i]) if scenes[i] in MAIN else len(MAIN)) for i in indices]
        protocol = ProtocolInfo(
            name="nyud-imagebind", version="1", source=f"{__name__}: ImageBind appendix B; NYU-D v2 (Silberman 2012)",
            choices={"split": f"official splits.mat {split} ({len(indices)})", "class_with_several_names": "max",
                     "other": self.other, "other_members": [display(s) for s in members],
                     "input": "metric depth -> the model's disparity preprocessing", "prompts": "CLIP's 80 templates"},
            published=published("acc1", 54.0))
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=classnames,
                     class_groups=groups, templates=list(CLIP_TEMPLATES), files=[str(splits)],
                     probe_train="train" if split == "test" else None)

    def load(self, record: Record) -> Any:
        path, index = record.source
        depth = np.asarray(open_h5(path)["depths"][index], dtype=np.float32)  # (W, H) as stored
        return np.ascontiguousarray(depth.T)  # (H, W) metres
