"""The metadata of an index: one SQLite table, ``items(id, path, <manifest columns>)``.

SQLite (Python's standard library) gives typed columns, indexed lookups by id, cheap deletes
and ``where`` filters without loading anything into memory; nothing is pickled. Filters are a
dict (``{"speaker": "jackson"}``: equality, ``{"digit": [3, 7]}``: any of) or an SQL boolean
expression over the columns (``"digit >= 5 AND speaker != 'theo'"``), run on a read-only
connection so it can only read.
"""
from __future__ import annotations

import contextlib
import gc
import math
import numbers
import re
import sqlite3
import time
from types import MappingProxyType
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from binder.errors import BinderIndexError, BinderInputError
from binder.index.engines import Where
from binder.index.hits import Hit, Hits, hits_from_rows
from binder.files import FileRecord


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .-]{0,63}$")
RESERVED = ("id", "path")
CACHE_ROWS = 1_000_000  # a read-only generation up to this size keeps its rows in memory for searches
MMAP_BYTES = 1 << 30  # address space SQLite may map per connection (pages are shared with the OS cache)
CHUNK = 900  # bound parameters per statement (below SQLite's oldest limit of 999)
FILES = "files"  # the table of file records: id, real path, size, mtime_ns
WHERE_SECONDS = 5.0  # an SQL where filter running longer is stopped
WHERE_MAX_LENGTH = 1_000_000  # the largest string or blob an SQL where filter may make (bytes)


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
            raise BinderIndexError(f"index metadata {str(self.path)!r} is not a readable SQLite file: {err}") from None

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

    def insert(self, ids: Sequence[int], rows: Sequence[Mapping[str, Any]],
               files: Optional[Sequence[Optional[FileRecord]]] = None) -> None:
        """Add one row per id (``rows``: ``path`` plus metadata columns) and the file records of
        the rows that are files (what :meth:`file_record` checks before a file is served)."""
        self.ensure_columns(rows)
        names = list(self.columns)
        sql = f"INSERT INTO items ({', '.join(map(_q, names))}) VALUES ({', '.join('?' * len(names))})"
        values = [[int(i) if n == "id" else _plain(r.get(n)) for n in names] for i, r in zip(ids, rows)]
        self.db.executemany(sql, values)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {FILES} (id INTEGER PRIMARY KEY, real TEXT NOT NULL, "
                        "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL)")
        records = [(int(i), f.real, f.size, f.mtime_ns) for i, f in zip(ids, files or ()) if f is not None]
        self.db.executemany(f"INSERT INTO {FILES} VALUES (?, ?, ?, ?)", records)

    def delete(self, ids: Sequence[int]) -> None:
        has_files = self._has_files()
        for start in range(0, len(ids), CHUNK):
            part = [int(i) for i in ids[start : start + CHUNK]]
            marks = ", ".join("?" * len(part))
            self.db.execute(f"DELETE FROM items WHERE id IN ({marks})", part)
            if has_files:
                self.db.execute(f"DELETE FROM {FILES} WHERE id IN ({marks})", part)

    def _has_files(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (FILES,)).fetchone() \
            is not None

    def file_record(self, item_id: int) -> Optional[FileRecord]:
        """What the item's file was when it was indexed; None for text, or an index made before
        binder recorded files."""
        if not self._has_files():
            return None
        row = self.db.execute(f"SELECT real, size, mtime_ns FROM {FILES} WHERE id = ?", (int(item_id),)).fetchone()
        return FileRecord(*row) if row else None

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

    def hit_rows(self, ids: Iterable[int]) -> Dict[int, Tuple[str, Mapping[str, Any]]]:
        """``{id: (path, read-only {column: value})}`` for the ids that exist, null columns left out
        (what a search result carries), from memory when :meth:`row_cache` holds the rows."""
        ids = ids.astype(np.int64) if isinstance(ids, np.ndarray) else np.fromiter(ids, dtype=np.int64)
        wanted = np.unique(ids)
        wanted = wanted[wanted >= 0]
        if self.row_cache() is not None:
            return self._cache.lookup(wanted)
        out: Dict[int, Tuple[str, Mapping[str, Any]]] = {}
        names = list(self.columns)  # "id", "path", then the metadata columns
        meta = names[2:]
        wanted = wanted.tolist()
        for start in range(0, len(wanted), CHUNK):
            part = wanted[start : start + CHUNK]
            sql = f"SELECT {', '.join(map(_q, names))} FROM items WHERE id IN ({', '.join('?' * len(part))})"
            out.update({r[0]: (r[1], _frozen(zip(meta, r[2:]))) for r in self.db.execute(sql, part)})
        return out

    def row_cache(self) -> Optional["_RowCache"]:
        """The rows in memory, loaded at the first call, for a read-only generation of at most
        ``CACHE_ROWS`` rows (it never changes: writers make the next generation); else None."""
        if self._cache is None and self.readonly and 0 < self.count() <= CACHE_ROWS:
            self._cache = _RowCache(self.db, list(self.columns))
        return self._cache

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Hits]:
        """One :class:`Hits` per query from engine output (scores, ids: (N, k); id -1 = no hit)."""
        cache = self.row_cache()
        if cache is not None:
            return cache.hits(scores, ids)
        return hits_from_rows(scores, ids, self.hit_rows(ids[ids >= 0]))

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
            return self._sql_filter(where)
        if not isinstance(where, Mapping):
            raise BinderInputError(f"where must be a dict of column -> value(s) or an SQL expression, got {where!r}")
        sql, params = self._dict_filter(where)
        try:
            return np.array([r[0] for r in self.db.execute(sql, params)], dtype=np.int64)
        except (sqlite3.DatabaseError, sqlite3.Warning) as err:
            raise BinderInputError(f"where={where!r} is not a valid filter ({err}); the metadata columns are "
                                   f"{list(self.columns)}") from None

    def _sql_filter(self, where: str) -> np.ndarray:
        """An SQL ``where`` on its own read-only connection, stopped after :data:`WHERE_SECONDS`
        (a recursive or enormous query cannot run away) and with strings and blobs capped."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA query_only = 1")
            if hasattr(db, "setlimit"):  # Python 3.11+
                db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, WHERE_MAX_LENGTH)
            deadline = time.monotonic() + WHERE_SECONDS
            db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # non-zero: interrupt
            try:
                return np.array([r[0] for r in db.execute(f"SELECT id FROM items WHERE ({where})")], dtype=np.int64)
            except (sqlite3.DatabaseError, sqlite3.Warning, OverflowError) as err:
                if time.monotonic() > deadline:
                    raise BinderInputError(f"where={where[:200]!r} ran for over {WHERE_SECONDS:g} s and was stopped: "
                                           "filter on the metadata columns with plain comparisons") from None
                raise BinderInputError(f"where={where[:200]!r} is not a valid filter ({err}); the metadata columns "
                                       f"are {list(self.columns)}") from None
        finally:
            db.close()

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
    """The rows of an immutable generation in memory: a position table by id, and per row a
    ``(path, metadata)`` pair whose metadata is a read-only mapping made once and shared by every
    hit of that row (about 300 bytes a row: a few percent of the row's vector)."""

    def __init__(self, db: sqlite3.Connection, names: List[str]) -> None:
        rows = db.execute(f"SELECT {', '.join(map(_q, names))} FROM items ORDER BY id").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        self.position = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)  # id -> row, -1: none
        self.position[ids] = np.arange(len(ids))
        meta = names[2:]
        self.rows = [(r[1], _frozen(zip(meta, r[2:])) if meta else EMPTY) for r in rows]

    def positions(self, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Row positions of ``ids`` (any shape) and whether each id is there."""
        inside = (ids >= 0) & (ids < len(self.position))
        pos = self.position[np.where(inside, ids, 0)]
        return pos, inside & (pos >= 0)

    def lookup(self, wanted: np.ndarray) -> Dict[int, Tuple[str, Mapping[str, Any]]]:
        pos, keep = self.positions(wanted)
        return {i: self.rows[p] for i, p in zip(wanted[keep].tolist(), pos[keep].tolist())}

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Hits]:
        """Result objects straight from the rows (no per-hit records or dicts)."""
        pos, keep = self.positions(ids)  # (N, k) each
        new, rows = tuple.__new__, self.rows
        with _no_cycle_collection():  # thousands of acyclic tuples: nothing for the collector to find
            if keep.all():  # the usual case: every slot holds a hit
                return [Hits([new(Hit, (i, s, rows[p])) for s, i, p in zip(s_row, i_row, p_row)])
                        for s_row, i_row, p_row in zip(scores.tolist(), ids.tolist(), pos.tolist())]
            return [Hits([new(Hit, (i, s, rows[p])) for s, i, p, ok in zip(s_row, i_row, p_row, k_row) if ok])
                    for s_row, i_row, p_row, k_row in zip(scores.tolist(), ids.tolist(), pos.tolist(), keep.tolist())]


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause Python's cycle collector (not reference counting) while making many acyclic objects;
    it would otherwise walk them every 700 allocations. Restored as it was, also on error."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(pairs: Iterable[Tuple[str, Any]]) -> Mapping[str, Any]:
    """A read-only mapping of the non-null (column, value) pairs."""
    return MappingProxyType({c: v for c, v in pairs if v is not None})
