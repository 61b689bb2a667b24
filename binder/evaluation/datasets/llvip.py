"""LLVIP: aligned visible / infrared street scenes with pedestrian boxes (Jia et al., ICCVW 2021,
arXiv 2108.10831; github.com/bupt-ai-cz/LLVIP).

Layout (the official release): ``<root>/infrared/{train,test}/<name>.jpg`` (and ``visible/``) with
``<root>/Annotations/<name>.xml`` in Pascal VOC form (``<object><name>person</name><bndbox>
<xmin>...``). A flat copy (``<root>/infrared/<name>.jpg``, no split folders) is read as one
``test`` split; option ``annotations`` points at the XML folder when it lives elsewhere.

Protocol (ImageBind, arXiv 2305.05665, appendix B): thermal only; every annotated person box of
the test ("val") images is cropped, and for each one a background box of the same width and height
is placed at random in the same image where it overlaps no person box (up to ``tries`` draws;
a person with no free place gets no background box, counted in the JSON); the crops are
classified person vs background, each class scored as the maximum over its prompt names (person,
man, woman, people / street, road, car, light, tree) with CLIP's templates. ImageBind reports
15,809 crops (7,931 person). The random boxes are drawn from a generator seeded with ``seed`` and
the image name, so runs are repeatable. Published: ``imagebind_huge`` 63.4 top-1 (chance 50).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, List, Optional, Tuple

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
)
from binder.evaluation.datasets._common import published
from binder.evaluation.prompts import CLIP_TEMPLATES

PERSON_NAMES = ["person", "man", "woman", "people"]
BACKGROUND_NAMES = ["street", "road", "car", "light", "tree"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
Box = Tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (pixels, max exclusive)


def read_voc(path: Path, classes: Tuple[str, ...] = ("person",)) -> Tuple[Tuple[int, int], List[Box]]:
    """A VOC XML file -> ((width, height), boxes of ``classes``)."""
    with reading(path, "LLVIP annotation", "Pascal VOC XML"):
        tree = ET.parse(path).getroot()
        size = tree.find("size")
        wh = (int(size.findtext("width")), int(size.findtext("height"))) if size is not None else (0, 0)
        boxes = []
        for obj in tree.iter("object"):
            if (obj.findtext("name") or "").strip() not in classes:
                continue
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((x0, y0, x1, y1))
    return wh, boxes


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def background_box(box: Box, persons: List[Box], size: Tuple[int, int], rng: np.random.Generator,
                   tries: int) -> Optional[Box]:
    """A box of ``box``'s size inside the image that overlaps no person box, or None."""
    w, h = box[2] - box[0], box[3] - box[1]
    if w >= size[0] or h >= size[1]:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(0, size[0] - w + 1)), int(rng.integers(0, size[1] - h + 1))
        cand = (x, y, x + w, y + h)
        if not any(overlaps(cand, p) for p in persons):
            return cand
    return None


@register_dataset
@dataclass
class LLVIP:
    """LLVIP zero-shot person vs background classification of thermal crops."""

    name: ClassVar[str] = "llvip"
    title: ClassVar[str] = "LLVIP"
    task: ClassVar[str] = CLASSIFICATION
    modality: ClassVar[str] = "thermal"
    splits: ClassVar[Tuple[str, ...]] = ("test", "train")
    default_split: ClassVar[str] = "test"
    layout: ClassVar[str] = "<root>/infrared/{train,test}/<name>.jpg and <root>/Annotations/<name>.xml (Pascal VOC)"
    annotations: str = ""  # the VOC XML folder (default: <root>/Annotations)
    seed: int = 0  # seeds the background boxes (with each image's name)
    tries: int = 100  # random draws per background box
    min_size: int = 1  # person boxes smaller than this (pixels, either side) are not used

    def _images(self, root: Path, split: str) -> List[Path]:
        folder = root / "infrared" / split
        if not folder.is_dir():
            flat = root / "infrared"
            if not flat.is_dir() or split != "test" or any(p.is_dir() for p in flat.iterdir()):
                raise BinderInputError(f"{self.title}: folder {str(folder)!r} not found; expected {self.layout}")
            folder = flat
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        check_split(split, self.splits, self.title)
        notes = Path(self.annotations).expanduser() if self.annotations else root / "Annotations"
        if not notes.is_dir():
            raise BinderInputError(f"{self.title}: annotation folder {str(notes)!r} not found; expected {self.layout}")
        records, skipped, no_background, small = [], [], 0, 0
        for image in self._images(root, split):
            xml = notes / f"{image.stem}.xml"
            if not xml.is_file():
                skipped.append((image.name, f"no annotation {xml.name} in {notes.name}/"))
                continue
            size, persons = read_voc(xml)
            if size == (0, 0):
                raise BinderInputError(f"{self.title}: {str(xml)!r} has no <size>; expected Pascal VOC XML")
            rng = np.random.default_rng([self.seed, zlib.crc32(image.stem.encode())])
            for k, box in enumerate(persons):
                if min(box[2] - box[0], box[3] - box[1]) < self.min_size:
                    small += 1
                    continue
                records.append(Record(id=f"{image.name}#person{k}", source=(str(image), box), label=0, path=str(image)))
                bg = background_box(box, persons, size, rng, self.tries)
                if bg is None:
                    no_background += 1
                else:
                    records.append(Record(id=f"{image.name}#background{k}", source=(str(image), bg), label=1,
                                          path=str(image)))
        protocol = ProtocolInfo(
            name="llvip-imagebind", version="1", source=f"{__name__}: ImageBind appendix B; LLVIP (Jia 2021)",
            choices={"crops": "every person box + one random non-overlapping box of the same size per person",
                     "class_with_several_names": "max", "person": PERSON_NAMES, "background": BACKGROUND_NAMES,
                     "persons_without_background_box": no_background, "persons_below_min_size": small,
                     "seed": self.seed, "prompts": "CLIP's 80 templates"},
            published=published("acc1", 63.4))
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=["person", "background"],
                     class_groups={0: list(PERSON_NAMES), 1: list(BACKGROUND_NAMES)}, templates=list(CLIP_TEMPLATES),
                     skipped=skipped)

    def load(self, record: Record) -> Any:
        from PIL import Image

        path, box = record.source
        with reading(path, "LLVIP infrared image", "a readable image"):
            with Image.open(path) as im:
                return np.asarray(im.convert("L").crop(tuple(box)))  # (h, w) uint8
