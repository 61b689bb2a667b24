"""What an evaluation dataset is: records read from an official on-disk layout, and the registry.

A dataset adapter (one module in :mod:`binder.evaluation.datasets`, registered in
:data:`DATASETS`) is a dataclass whose fields are its protocol's choices (``binder eval --option
key=value`` sets them). It reads a split of the dataset exactly as the dataset's own download lays
it out (:meth:`DatasetAdapter.read` -> :class:`Split`: one :class:`Record` per item, with its
label(s) or caption(s), the class names from the dataset's own metadata, the protocol written down)
and turns one record into a raw model input (:meth:`DatasetAdapter.load`: a file path, a
``(samples, rate)`` pair, an array, a PIL image). Third-party packages add datasets through the
``binder.eval_datasets`` entry-point group, like every other extension point
(:class:`binder.extension.Registry`).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple

from binder.errors import BinderInputError
from binder.extension import Registry, protocol_check

CLASSIFICATION, MULTILABEL, RETRIEVAL = "zeroshot_classification", "zeroshot_multilabel", "zeroshot_retrieval"
TASKS = (CLASSIFICATION, MULTILABEL, RETRIEVAL)
"""Tasks an adapter declares. Multi-label sets are written as CLIP_benchmark's
``zeroshot_classification`` with ``mean_average_precision``, as that tool does."""


@dataclass
class Record:
    """One item of a split.

    Attributes:
        id: Stable identifier (a relative path, a YouTube id and start, ``<file>#<box>``...).
        source: What :meth:`DatasetAdapter.load` reads (usually the file path).
        label: Class index (single-label classification).
        labels: Class indices (multi-label classification).
        captions: Captions (retrieval), one or several.
        group: A fold or other group the protocol reports separately (ESC-50's folds).
        path: The file the item is read from, for the cache's freshness check (None: none).
    """

    id: str
    source: Any
    label: Optional[int] = None
    labels: Optional[List[int]] = None
    captions: Optional[List[str]] = None
    group: Optional[str] = None
    path: Optional[str] = None


@dataclass
class ProtocolInfo:
    """The protocol a split is evaluated with: name, version, where it comes from, the choices
    made (each documented or explicitly binder's), and ImageBind's published figure."""

    name: str
    version: str
    source: str
    choices: Dict[str, Any] = field(default_factory=dict)
    published: Optional[Dict[str, Any]] = None  # {"model": "imagebind_huge", "metric": "acc1", "value": 66.9}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Split:
    """A split read from disk: the records, class names, prompts and protocol.

    Attributes:
        class_groups: Class index -> the names it is scored with (the class scores as the
            maximum over its names' prompt embeddings; NYU-D's "other", LLVIP's person/background).
        skipped: ``(id, reason)`` of items the layout lists but that cannot be used (a missing
            file); items that fail to decode are added while embedding.
        files: Metadata files the split was read from (their size and time go in the cache key).
        probe_train: For few-shot probes: the split to draw the shots from (None: cross-fold over
            :attr:`Record.group`, or no probe).
    """

    dataset: str
    split: str
    modality: str
    task: str
    records: List[Record]
    protocol: ProtocolInfo
    classnames: List[str] = field(default_factory=list)
    class_groups: Dict[int, List[str]] = field(default_factory=dict)
    templates: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    probe_train: Optional[str] = None

    def names_of(self, index: int) -> List[str]:
        """The names class ``index`` is scored with."""
        return self.class_groups.get(index, [self.classnames[index]])


class DatasetAdapter(Protocol):
    """What a registered evaluation dataset provides (a dataclass: its fields are the options)."""

    name: str  # registry name (esc50)
    title: str  # human name (ESC-50)
    task: str  # one of TASKS
    modality: str  # what the items are (audio, depth, ...)
    splits: Tuple[str, ...]  # the split names read accepts
    default_split: str
    layout: str  # the on-disk layout read, for errors and docs

    def read(self, root: Path, split: str) -> Split:
        """Read ``split`` from the dataset folder ``root``."""

    def load(self, record: Record) -> Any:
        """One record -> a raw input for the model's preprocessor."""


DATASETS: Registry = Registry("evaluation dataset", group="binder.eval_datasets",
                              builtin=["binder.evaluation.datasets"], check=protocol_check(DatasetAdapter))
"""Every evaluation dataset, built-in (one module each in binder/evaluation/datasets) and plugins."""


def register_dataset(cls: type) -> type:
    """Class decorator: register an adapter class under its ``name``."""
    return DATASETS.register(cls.name, cls)


def list_datasets(pattern: str = "*") -> List[str]:
    """Names of the registered evaluation datasets."""
    return DATASETS.list(pattern)


def build_adapter(name: str, options: Optional[Dict[str, Any]] = None) -> Any:
    """The adapter registered as ``name`` with its options set (strings are converted to the
    field's type); an unknown option is one error naming the accepted ones."""
    from binder.config import build_dataclass

    cls = DATASETS.get(name)
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        accepted = ", ".join(sorted(fields)) or "none"
        raise BinderInputError(f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; "
                               f"its options: {accepted}")
    converted = {k: _convert(v, fields[k], name) for k, v in options.items()}
    return build_dataclass(cls, converted, f"dataset {name!r} options") if fields else cls()


def _convert(value: Any, f: "dataclasses.Field", dataset: str) -> Any:
    """A command-line string -> the option's type (bool, int, float, list of str)."""
    if not isinstance(value, str):
        return value
    kind = str(f.type)
    try:
        if kind in ("bool", "<class 'bool'>"):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if kind in ("int", "<class 'int'>", "Optional[int]"):
            return None if value.lower() == "none" else int(value)
        if kind in ("float", "<class 'float'>", "Optional[float]"):
            return None if value.lower() == "none" else float(value)
        if kind.startswith(("List[", "Tuple[", "Sequence[")):
            return [v for v in value.split(",") if v]
    except ValueError:
        raise BinderInputError(f"dataset {dataset!r} option {f.name}: {value!r} is not a {kind}") from None
    return value


def parse_options(pairs: Iterable[str]) -> Dict[str, str]:
    """``["key=value", ...]`` -> dict; anything without ``=`` is an error."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BinderInputError(f"--option takes key=value, got {pair!r}")
        out[key.strip()] = value
    return out


# ----------------------------------------------------------------------------------------------
# Helpers the adapters share: layout checks that name what is missing
# ----------------------------------------------------------------------------------------------

def check_root(root: "str | os.PathLike", title: str, layout: str) -> Path:
    """``root`` as a Path if it is a folder; else one error saying what it should hold."""
    path = Path(root).expanduser()
    if not path.exists():
        raise BinderInputError(f"{title} root {str(path)!r} does not exist; expected {layout}")
    if not path.is_dir():
        raise BinderInputError(f"{title} root {str(path)!r} is not a folder; expected {layout}")
    return path


def require(path: Path, title: str, what: str, layout: str, folder: bool = False) -> Path:
    """``path`` if it exists (as a folder with ``folder``); else an error naming it and the layout."""
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise BinderInputError(f"{title}: {kind} {str(path)!r} ({what}) not found; expected {layout}")
    return path


def first_existing(candidates: Sequence[Path], title: str, what: str, layout: str) -> Path:
    """The first of ``candidates`` that exists; else an error naming them all."""
    for c in candidates:
        if c.exists():
            return c
    names = ", ".join(repr(str(c)) for c in candidates)
    raise BinderInputError(f"{title}: {what} not found (looked for {names}); expected {layout}")


def read_csv(path: Path, title: str, required: Sequence[str], header: bool = True,
             columns: Optional[Sequence[str]] = None, comment: Optional[str] = None) -> List[Dict[str, str]]:
    """Rows of a CSV file as dicts (values stripped). ``header=False`` names the columns
    ``columns``. A missing required column is one error naming it and the columns found."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = [ln for ln in f if ln.strip() and not (comment and ln.lstrip().startswith(comment))]
    except (OSError, UnicodeDecodeError) as err:
        raise BinderInputError(f"{title}: {str(path)!r} is not a readable UTF-8 CSV file: {err}") from None
    reader = csv.reader(lines, skipinitialspace=True)
    try:
        rows = [r for r in reader]
    except csv.Error as err:
        raise BinderInputError(f"{title}: {str(path)!r} is not a valid CSV file: {err}") from None
    if header:
        if not rows:
            raise BinderInputError(f"{title}: {str(path)!r} is empty; expected a header with columns {list(required)}")
        names, rows = [h.strip() for h in rows[0]], rows[1:]
    else:
        names = list(columns or [])
    missing = [c for c in required if c not in names]
    if missing:
        raise BinderInputError(f"{title}: {str(path)!r} lacks column(s) {missing}; expected {list(required)}, "
                               f"found {names}")
    out = []
    for i, row in enumerate(rows):
        if len(row) < len(names) and len(row) < max(names.index(c) for c in required) + 1:
            raise BinderInputError(f"{title}: {str(path)!r} row {i + 1 + header} has {len(row)} fields; expected "
                                   f"{len(names)} ({names})")
        out.append({n: v.strip() for n, v in zip(names, row)})
    return out


def digest(values: Any) -> str:
    """SHA-256 of a JSON-able value (stable key order)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def index_folder(folder: Path, suffixes: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """``{file stem: path}`` of every file under ``folder`` (recursively), for layouts whose file
    names carry the item id (``<ytid>_<start>.wav``)."""
    out: Dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and (not suffixes or p.suffix.lower() in suffixes):
            out.setdefault(p.stem, p)
    return out


def check_split(split: str, splits: Sequence[str], title: str) -> str:
    if split not in splits:
        raise BinderInputError(f"{title} has no split {split!r}; its splits: {', '.join(splits)}")
    return split
