"""The metadata of an index: one SQLite table, ``items(id, path, <manifest columns>)``.

SQLite (Python's standard library) gives typed columns, indexed lookups by id, cheap deletes
and ``where`` filters without loading anything into memory; nothing is pickled. Filters are a
dict (``{"speaker": "jackson"}``: equality, ``{"digit": [3, 7]}``: any of) or an SQL boolean
expression over the columns (``"digit >= 5 AND speaker != 'theo'"``), run on a read-only
connection so it can only read.
"""
from __future__ import annotations

import math
import numbers
import re
import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from binder.errors import BinderInputError

Where = Union[None, str, Mapping[str, Any]]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .-]{0,63}$")
RESERVED = ("id", "path")
CACHE_ROWS = 1_000_000  # a read-only generation up to this size keeps its rows in memory for searches
MMAP_BYTES = 1 << 30  # address space SQLite may map per connection (pages are shared with the OS cache)
CHUNK = 900  # bound parameters per statement (below SQLite's oldest limit of 999)


def column_type(values: Iterable[Any]) -> str:
    """The SQLite type of a metadata column: INTEGER, REAL or TEXT, from its non-empty values."""
    kinds = set()
    for v in values:
        if v is None or v == "":
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return "TEXT"
        kinds.add("INTEGER" if isinstance(v, numbers.Integral) else "REAL")
    return "REAL" if "REAL" in kinds else "INTEGER" if kinds else "TEXT"


def check_column(name: str) -> str:
    """A metadata column name (letters, digits, ``_ .-``, not ``id``/``path``-clashing), or an error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise BinderInputError(f"metadata column {name!r} is not a usable name: use letters, digits, '_', '.', '-' "
                               "and spaces, starting with a letter or '_' (at most 64 characters)")
    return name


def _q(name: str) -> str:
    return '"' + name + '"'


class MetadataStore:
    """The ``items`` table of one index generation.

    Args:
        path: The SQLite file.
        readonly: Open it read-only (searching); writers use ``readonly=False``.
    """

    def __init__(self, path: Path, readonly: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._cache: Optional[_RowCache] = None
        uri = f"file:{self.path}?mode={'ro' if readonly else 'rwc'}"
        try:
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self.db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")  # row lookups read mapped pages, not copies
            self.columns = self._columns()
        except sqlite3.DatabaseError as err:
            raise BinderInputError(f"index metadata {str(self.path)!r} is not a readable SQLite file: {err}") from None

    def _columns(self) -> Dict[str, str]:
        rows = self.db.execute("PRAGMA table_info(items)").fetchall()
        return {r[1]: r[2] for r in rows}

    def close(self) -> None:
        self.db.close()

    # ----- writing ----------------------------------------------------------------------------

    def ensure_columns(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Create the table, and any column the rows bring that it lacks."""
        if not self.columns:
            self.db.execute('CREATE TABLE items (id INTEGER PRIMARY KEY, path TEXT)')
            self.columns = {"id": "INTEGER", "path": "TEXT"}
        new = sorted({k for r in rows for k in r} - set(self.columns))
        for name in new:
            kind = column_type(r.get(name) for r in rows)
            self.db.execute(f"ALTER TABLE items ADD COLUMN {_q(check_column(name))} {kind}")
            self.columns[name] = kind

    def insert(self, ids: Sequence[int], rows: Sequence[Mapping[str, Any]]) -> None:
        """Add one row per id (``rows``: ``path`` plus metadata columns)."""
        self.ensure_columns(rows)
        names = list(self.columns)
        sql = f"INSERT INTO items ({', '.join(map(_q, names))}) VALUES ({', '.join('?' * len(names))})"
        values = [[int(i) if n == "id" else _plain(r.get(n)) for n in names] for i, r in zip(ids, rows)]
        self.db.executemany(sql, values)

    def delete(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), CHUNK):
            part = [int(i) for i in ids[start : start + CHUNK]]
            self.db.execute(f"DELETE FROM items WHERE id IN ({', '.join('?' * len(part))})", part)

    def commit(self) -> None:
        self.db.commit()

    # ----- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0]) if self.columns else 0

    def all_ids(self) -> np.ndarray:
        if not self.columns:
            return np.zeros(0, dtype=np.int64)
        return np.array([r[0] for r in self.db.execute("SELECT id FROM items ORDER BY id")], dtype=np.int64)

    def rows(self, ids: Iterable[int]) -> Dict[int, Dict[str, Any]]:
        """``{id: {"path": ..., column: value}}`` for the ids that exist (null columns left out)."""
        return {i: {"path": path, **meta} for i, (path, meta) in self.hit_rows(ids).items()}

    def hit_rows(self, ids: Iterable[int]) -> Dict[int, Tuple[str, Dict[str, Any]]]:
        """``{id: (path, {column: value})}`` for the ids that exist, null columns left out (what a
        search result carries). A read-only generation of at most ``CACHE_ROWS`` rows answers from
        columns loaded once (it never changes: writers make the next generation)."""
        wanted = np.unique(np.fromiter(ids, dtype=np.int64) if not isinstance(ids, np.ndarray) else ids.astype(np.int64))
        wanted = wanted[wanted >= 0]
        if self._cache is None and self.readonly and 0 < self.count() <= CACHE_ROWS:
            self._cache = _RowCache(self.db, list(self.columns))
        if self._cache is not None:
            return self._cache.lookup(wanted)
        out: Dict[int, Tuple[str, Dict[str, Any]]] = {}
        names = list(self.columns)  # "id", "path", then the metadata columns
        meta = names[2:]
        wanted = wanted.tolist()
        for start in range(0, len(wanted), CHUNK):
            part = wanted[start : start + CHUNK]
            sql = f"SELECT {', '.join(map(_q, names))} FROM items WHERE id IN ({', '.join('?' * len(part))})"
            out.update({r[0]: (r[1], {c: v for c, v in zip(meta, r[2:]) if v is not None})
                        for r in self.db.execute(sql, part)})
        return out

    def missing(self, ids: Sequence[int]) -> List[int]:
        """The ids of ``ids`` that are not in the table."""
        present = self.rows(ids)
        return [int(i) for i in ids if int(i) not in present]

    def ids_where(self, where: Where) -> np.ndarray:
        """The ids of the rows a filter selects.

        Raises:
            BinderInputError: an unknown column or a malformed filter, naming the columns there are.
        """
        if isinstance(where, str):
            sql, params = f"SELECT id FROM items WHERE ({where})", []
        elif isinstance(where, Mapping):
            sql, params = self._dict_filter(where)
        else:
            raise BinderInputError(f"where must be a dict of column -> value(s) or an SQL expression, got {where!r}")
        try:
            return np.array([r[0] for r in self.db.execute(sql, params)], dtype=np.int64)
        except (sqlite3.DatabaseError, sqlite3.Warning) as err:
            raise BinderInputError(f"where={where!r} is not a valid filter ({err}); the metadata columns are "
                                   f"{list(self.columns)}") from None

    def _dict_filter(self, where: Mapping[str, Any]) -> tuple:
        clauses, params = [], []
        for name, value in where.items():
            if name not in self.columns:
                raise BinderInputError(f"where: no metadata column {name!r}; the columns are {list(self.columns)}")
            if isinstance(value, (list, tuple, set, frozenset)):
                values = [_plain(v) for v in value]
                if not values:
                    raise BinderInputError(f"where: the value list of {name!r} is empty")
                clauses.append(f"{_q(name)} IN ({', '.join('?' * len(values))})")
                params += values
            elif value is None:
                clauses.append(f"{_q(name)} IS NULL")
            else:
                clauses.append(f"{_q(name)} = ?")
                params.append(_plain(value))
        return f"SELECT id FROM items WHERE {' AND '.join(clauses) or '1'}", params


def _plain(value: Any) -> Any:
    """A value SQLite stores: numpy scalars -> Python, NaN -> NULL, anything else -> str."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    return str(value)


class _RowCache:
    """The rows of an immutable generation as columns: sorted ids (an array), paths and one tuple
    per metadata column (about 100 bytes a row with short paths)."""

    def __init__(self, db: sqlite3.Connection, names: List[str]) -> None:
        rows = db.execute(f"SELECT {', '.join(map(_q, names))} FROM items ORDER BY id").fetchall()
        columns = list(zip(*rows))  # one tuple per column
        self.ids = np.asarray(columns[0], dtype=np.int64)
        self.paths = columns[1]
        self.meta = list(zip(names[2:], columns[2:]))

    def lookup(self, wanted: np.ndarray) -> Dict[int, Tuple[str, Dict[str, Any]]]:
        pos = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
        keep = self.ids[pos] == wanted
        return {i: (self.paths[p], {c: col[p] for c, col in self.meta if col[p] is not None})
                for i, p in zip(wanted[keep].tolist(), pos[keep].tolist())}
