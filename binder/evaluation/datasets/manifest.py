"""Your own data from a manifest: a CSV (with a header) or JSON Lines file with a path column and
a label column (classification) or a caption column (retrieval), any modality.

``--root`` is the manifest file. Relative paths are resolved against its folder. Options:
``modality`` (required), ``path_column`` (default ``path``), ``label_column`` (``label``),
``caption_column`` (``caption``), ``split_column`` (``split``: when the manifest has it, only the
rows of the evaluated split are used; ``--split all`` uses every row), ``classnames`` (names for
integer labels, comma-separated; default: the sorted distinct labels, ``_`` read as a space).
With a caption column, rows with the same path gather their captions (several captions per item).
Labels holding ``|`` are multi-label (scored by mean average precision).

Protocol: zero-shot classification (CLIP's templates) or retrieval in both directions (R@1/5/10),
as ImageBind evaluates (arXiv 2305.05665).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Tuple

from binder.errors import BinderInputError
from binder.evaluation.base import CLASSIFICATION, MULTILABEL, RETRIEVAL, ProtocolInfo, Record, Split, register_dataset
from binder.evaluation.datasets._common import display, load_file
from binder.evaluation.datasets.folder import check_modality
from binder.evaluation.prompts import CLIP_TEMPLATES
from binder.manifests import read_rows, resolve


@register_dataset
@dataclass
class Manifest:
    """Zero-shot classification or retrieval of the files a manifest lists."""

    name: ClassVar[str] = "manifest"
    title: ClassVar[str] = "manifest"
    task: ClassVar[str] = CLASSIFICATION  # or retrieval / multi-label, as the columns say
    splits: ClassVar[Tuple[str, ...]] = ("all", "test", "val", "train")
    default_split: ClassVar[str] = "all"
    layout: ClassVar[str] = "a .csv (header) or .jsonl file with a path column and a label or caption column"
    modality: str = ""
    path_column: str = "path"
    label_column: str = "label"
    caption_column: str = "caption"
    split_column: str = "split"
    classnames: str = ""  # names for integer labels, comma-separated

    def read(self, root: Path, split: str) -> Split:
        modality = check_modality(self.modality, self.title)
        path = Path(root).expanduser()
        if not path.is_file():
            raise BinderInputError(f"manifest {str(path)!r} does not exist or is not a file; expected {self.layout}")
        rows = [row for _, row in read_rows(path)]
        columns = sorted({k for r in rows for k in r})
        kind = RETRIEVAL if self.caption_column in columns else CLASSIFICATION if self.label_column in columns else None
        if self.path_column not in columns or kind is None:
            raise BinderInputError(f"manifest {str(path)!r} needs a {self.path_column!r} column and a "
                                   f"{self.label_column!r} or {self.caption_column!r} column; it has {columns}")
        if split != "all" and self.split_column in columns:
            rows = [r for r in rows if str(r.get(self.split_column, "")) == split]
        items: Dict[str, List[Any]] = {}
        for i, r in enumerate(rows):
            value = r.get(self.caption_column if kind == RETRIEVAL else self.label_column)
            if r.get(self.path_column) in (None, "") or value in (None, ""):
                raise BinderInputError(f"manifest {str(path)!r} row {i + 1}: empty {self.path_column!r} or "
                                       f"{self.caption_column if kind == RETRIEVAL else self.label_column!r}")
            items.setdefault(resolve(r[self.path_column], path), []).append(value)
        protocol = ProtocolInfo(name=f"manifest-{'retrieval' if kind == RETRIEVAL else 'classification'}", version="1",
                                source=__name__, choices={"columns": {"path": self.path_column,
                                                                      "label": self.label_column,
                                                                      "caption": self.caption_column}})
        if kind == RETRIEVAL:
            records = [Record(id=f, source=f, captions=[str(c) for c in caps], path=f) for f, caps in items.items()]
            return Split(self.name, split, modality, RETRIEVAL, records, protocol, files=[str(path)])
        return self._classification(path, split, modality, items, protocol)

    def _classification(self, path: Path, split: str, modality: str, items: Dict[str, List[Any]],
                        protocol: ProtocolInfo) -> Split:
        values = {f: sorted({p.strip() for v in vals for p in str(v).split("|") if p.strip()})
                  for f, vals in items.items()}
        multi = any(len(v) > 1 for v in values.values())
        given = [c.strip() for c in self.classnames.split(",") if c.strip()]
        labels = sorted({v for vs in values.values() for v in vs},
                        key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
        if given:
            bad = [v for v in labels if not v.isdigit() or int(v) >= len(given)]
            if bad:
                raise BinderInputError(f"manifest {str(path)!r}: with classnames given, labels must be integers "
                                       f"0..{len(given) - 1}; found {bad[:5]}")
            names, index = given, {v: int(v) for v in labels}
        else:
            names, index = [display(v) for v in labels], {v: i for i, v in enumerate(labels)}
        records = []
        for f, vs in values.items():
            idx = [index[v] for v in vs]
            records.append(Record(id=f, source=f, path=f, label=None if multi else idx[0],
                                  labels=idx if multi else None))
        return Split(self.name, split, modality, MULTILABEL if multi else CLASSIFICATION, records, protocol,
                     classnames=names, templates=list(CLIP_TEMPLATES), files=[str(path)])

    def load(self, record: Record) -> Any:
        return load_file(record.source, self.modality)
