"""Manifests: the one reader of the CSV and JSON Lines files that list a user's items.

Used wherever binder reads such a list: the items of an index (``binder index build
items.csv``), the pairs a run trains on (``data=manifest``) and the items of an evaluation
(``binder eval --dataset manifest``). A CSV has a header row; a JSON Lines file (``.jsonl``,
``.ndjson``) one object per line. Relative paths are resolved against the manifest's folder.
Every problem is one :class:`~binder.errors.BinderInputError` naming the file (and the line).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from binder.errors import BinderInputError

SUFFIXES = (".csv", ".jsonl", ".ndjson")
Row = Tuple[int, Dict[str, Any]]  # (line number in the file, the row's columns)


def is_manifest(path: "str | Path") -> bool:
    """Whether ``path`` names a manifest file by its suffix."""
    return Path(path).suffix.lower() in SUFFIXES


def read_rows(path: "str | Path", typed: bool = False, what: str = "manifest") -> List[Row]:
    """The rows of a manifest, each with its line number.

    Args:
        path: A ``.csv`` (header row) or ``.jsonl`` / ``.ndjson`` file.
        typed: Turn CSV cells that read as numbers into ints and floats (JSON values keep their types).
        what: What the file is, for messages.

    Raises:
        BinderInputError: a missing file, a folder, an unknown suffix, no header, malformed CSV or
            JSON, a JSON line that is not an object.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise BinderInputError(f"{what} {str(path)!r} is a directory; expected a .csv or .jsonl file")
    if not path.is_file():
        raise BinderInputError(f"{what} {str(path)!r} does not exist")
    if not is_manifest(path):
        raise BinderInputError(f"{what} {str(path)!r} must be a .csv (with a header row) or .jsonl file")
    if path.suffix.lower() == ".csv":
        return _csv_rows(path, typed, what)
    return _jsonl_rows(path, what)


def _csv_rows(path: Path, typed: bool, what: str) -> List[Row]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise BinderInputError(f"{what} {str(path)!r} is empty: expected a header row naming its columns")
            return [(i + 2, {k: _number(v) if typed else v for k, v in row.items() if k is not None})
                    for i, row in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise BinderInputError(f"{what} {str(path)!r} is not a readable UTF-8 CSV file: {err}") from None


def _jsonl_rows(path: Path, what: str) -> List[Row]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise BinderInputError(f"{what} {str(path)!r} is not UTF-8 text: {err}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BinderInputError(f"{what} {str(path)!r} line {i} is not JSON: {err}") from None
        if not isinstance(row, dict):
            raise BinderInputError(f"{what} {str(path)!r} line {i} must be a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


def _number(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def columns(rows: Sequence[Row]) -> List[str]:
    """Every column any row has, in first-seen order."""
    seen: Dict[str, None] = {}
    for _, row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def require(rows: Sequence[Row], path: "str | Path", needed: Sequence[str], what: str = "manifest",
            optional: str = "") -> None:
    """Refuse a manifest without rows or without one of the ``needed`` columns, naming them."""
    have = columns(rows)
    missing = [c for c in needed if c not in have]
    if not rows or missing:
        extra = f" (optional: {optional})" if optional else ""
        raise BinderInputError(f"{what} {str(path)!r} needs the columns {list(needed)}{extra}; "
                               f"found {have if rows else 'no rows'}")


def resolve(value: Any, manifest: "str | Path") -> str:
    """A path cell as an absolute path: ``~`` expanded, relative paths against the manifest's folder."""
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (Path(manifest).expanduser().absolute().parent / p))
