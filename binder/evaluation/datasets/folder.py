"""Your own labelled data as class folders: ``<root>/<class>/<file>`` (torchvision's ImageFolder
layout), any modality.

``<root>/<split>/<class>/<file>`` is used when a folder named after the split exists (``binder
eval --split test``), else ``<root>/<class>/<file>``. Class names are the folder names with ``_``
read as a space; files are the modality's file types (its registered extensions; images: png, jpg,
...), hidden files ignored. Option ``modality`` (required) says what the files are. Few-shot probes
draw their shots from ``<root>/train/`` when evaluating another split that has one.

Protocol: zero-shot classification with CLIP's templates (ImageBind's default, arXiv 2305.05665),
``acc1``, ``acc5``, ``mean_per_class_recall``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Tuple

from binder.errors import BinderInputError
from binder.evaluation.base import CLASSIFICATION, ProtocolInfo, Record, Split, check_root, register_dataset
from binder.evaluation.datasets._common import display, load_file
from binder.evaluation.prompts import CLIP_TEMPLATES


def modality_extensions(modality: str) -> Tuple[str, ...]:
    """File suffixes of ``modality`` (images: the common image types; empty: any file)."""
    from binder.registry import get_modality

    if modality == "image":
        return (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
    if modality == "text":
        raise BinderInputError("class folders hold files; text cannot be classified from files")
    return tuple(get_modality(modality).extensions)


def check_modality(modality: str, title: str) -> str:
    if not modality:
        raise BinderInputError(f"{title} needs the option modality=<what the files are> (e.g. --option modality=audio)")
    from binder.types import modality_name

    return modality_name(modality)


@register_dataset
@dataclass
class ClassFolders:
    """Zero-shot classification of files in class folders."""

    name: ClassVar[str] = "folder"
    title: ClassVar[str] = "class folders"
    task: ClassVar[str] = CLASSIFICATION
    splits: ClassVar[Tuple[str, ...]] = ("all", "test", "val", "train")
    default_split: ClassVar[str] = "all"
    layout: ClassVar[str] = "<root>/<class>/<file> or <root>/<split>/<class>/<file>"
    modality: str = ""  # what the files are: audio, image, depth, thermal, imu, video, or a plugin's modality

    def read(self, root: Path, split: str) -> Split:
        root = check_root(root, self.title, self.layout)
        modality = check_modality(self.modality, self.title)
        base = root / split if (root / split).is_dir() else root
        if split != "all" and base == root:
            raise BinderInputError(f"{self.title}: no {split}/ folder under {str(root)!r}; use --split all or give the "
                                   f"{split} split its folder ({self.layout})")
        suffixes = modality_extensions(modality)
        classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        classes = [c for c in classes if c not in self.splits or base != root]
        if not classes:
            raise BinderInputError(f"{self.title}: {str(base)!r} has no class folders; expected {self.layout}")
        records = []
        for label, cls in enumerate(classes):
            for f in sorted((base / cls).rglob("*")):
                if f.is_file() and not f.name.startswith(".") and (not suffixes or f.suffix.lower() in suffixes):
                    records.append(Record(id=str(f.relative_to(base)), source=str(f), label=label, path=str(f)))
        protocol = ProtocolInfo(name="class-folders", version="1", source=__name__,
                                choices={"classes": "folder names, '_' read as a space",
                                         "prompts": "CLIP's 80 templates"})
        probe = "train" if split != "train" and (root / "train").is_dir() else None
        return Split(self.name, split, modality, self.task, records, protocol, classnames=[display(c) for c in classes],
                     templates=list(CLIP_TEMPLATES), probe_train=probe)

    def load(self, record: Record) -> Any:
        return load_file(record.source, self.modality)
