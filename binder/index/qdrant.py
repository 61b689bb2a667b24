"""The distributed backend of :class:`binder.Index`: a Qdrant collection (https://qdrant.tech).

Qdrant rather than Milvus: its Python client has a *local mode* (the same client API on files,
in-process, nothing else to install or run), so this backend is tested against the very code
path a cluster uses; its payload filters map one-to-one onto binder's ``where`` dicts; and
collection *aliases* give atomic rebuilds on a live cluster. Point it at a cluster with
``url=`` (``binder index build --engine qdrant --url https://host:6333``; an API key comes from
``$QDRANT_API_KEY`` and is never written to disk); without a URL the collection lives in local
mode inside the index folder. Either way the folder holds ``index.json`` (model fingerprint,
size, where the collection is), so ``Index.open`` checks the model exactly as for FAISS.

Building writes a new physical collection ``<name>-<generation>`` and then moves the alias
``<name>`` onto it in one operation; a build that dies leaves the alias on the previous one.
Items are points with binder's integer ids; ``path`` and metadata are the payload. SQL ``where``
strings need the FAISS backend: here ``where`` is a dict.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from binder.errors import BinderInputError, BinderLockError
from binder.files import FileRecord
from binder.index.store import Where

log = logging.getLogger(__name__)

LOCAL_DIR = "qdrant"
BATCH = 256
FILE_KEY = "_file"  # the payload key of an item's file record (not metadata)


def _models() -> Any:
    from qdrant_client import models

    return models


def connect(folder: Path, url: Optional[str], wait: float = 600.0) -> Any:
    """A client for ``url`` (a server or cluster), or local mode in ``folder/qdrant``. Local mode
    serves one client at a time: while another process has the folder open, wait for it (at most
    ``wait`` seconds, saying so once), then give up with one clear error."""
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise BinderInputError("engine='qdrant' needs qdrant-client: pip install 'binder-embed[qdrant]'") from None
    if url:
        return QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"), timeout=60)
    deadline, told = time.monotonic() + max(0.0, wait), False
    while True:
        try:
            return QdrantClient(path=str(folder / LOCAL_DIR))
        except RuntimeError as err:
            if "already accessed" not in str(err):
                raise
            if time.monotonic() >= deadline:
                raise BinderLockError(f"index {str(folder)!r}: its local Qdrant storage is open in another process "
                                      f"(gave up after {wait:g} s); local mode serves one process at a time: close "
                                      "the other, or use a Qdrant server (url=) for concurrent access") from None
            if not told:
                log.warning("index %s: its local Qdrant storage is open in another process: waiting for it (at most "
                            "%g s)", folder, wait)
                told = True
            time.sleep(0.2)


def to_filter(where: Where) -> Any:
    """A ``where`` dict -> a Qdrant filter (equality, or any of a list)."""
    if where is None:
        return None
    if not isinstance(where, Mapping):
        raise BinderInputError(f"the qdrant engine filters with a dict of column -> value(s), got {where!r} (SQL "
                               "expressions need the faiss engine)")
    models = _models()
    must = []
    for key, value in where.items():
        if isinstance(value, (list, tuple, set)):
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(value))))
        else:
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    return models.Filter(must=must)


def _payload(row: Mapping[str, Any], file: Optional[FileRecord] = None) -> Dict[str, Any]:
    payload = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if v is not None}
    if file is not None:
        payload[FILE_KEY] = [file.real, file.size, file.mtime_ns]
    return payload


class QdrantBackend:
    """One alias of a Qdrant collection."""

    name = "qdrant"

    def __init__(self, client: Any, alias: str, columns: List[str], url: Optional[str]) -> None:
        self.client, self.alias, self._columns, self.url = client, alias, list(columns), url
        self._count: Optional[int] = None

    @classmethod
    def build(cls, tmp: Path, final: Path, dim: int, ids: np.ndarray, vectors: np.ndarray,
              rows: Sequence[Mapping[str, Any]], files: Optional[Sequence[Optional[FileRecord]]] = None,
              url: Optional[str] = None, collection: Optional[str] = None, **unused: Any) -> Dict[str, Any]:
        """Write the points into a new collection and point the alias at it -> ``index.json`` fields.
        Local mode writes into ``tmp`` (the folder being built), which becomes ``final``."""
        if unused:
            raise BinderInputError(f"unknown qdrant option(s) {sorted(unused)}: use url= and collection=")
        alias = collection or final.name.replace(".", "-")
        client = connect(tmp, url)
        try:
            generation = cls._next_generation(client, alias)
            physical = f"{alias}-{generation}"
            cls._create(client, physical, dim, rows, remote=bool(url))
            cls._upsert(client, physical, ids, vectors, rows, files)
            cls._switch_alias(client, alias, physical)
        finally:
            client.close()
        columns = sorted({"path", *(k for r in rows for k in r)})
        return {"engine": "qdrant", "kind": "hnsw" if url else "exact",
                "qdrant": {"url": url, "local": None if url else LOCAL_DIR, "collection": alias,
                           "physical": physical, "generation": generation}, "columns": columns, "files": {}}

    @staticmethod
    def _next_generation(client: Any, alias: str) -> int:
        names = [c.name for c in client.get_collections().collections]
        gens = [int(n.rsplit("-", 1)[1]) for n in names if n.startswith(alias + "-") and n.rsplit("-", 1)[1].isdigit()]
        return max(gens, default=-1) + 1

    @staticmethod
    def _create(client: Any, name: str, dim: int, rows: Sequence[Mapping[str, Any]], remote: bool) -> None:
        models = _models()
        client.create_collection(name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
        if remote:  # payload indexes make filtered search fast on a server (local mode has none)
            for key in sorted({k for r in rows for k in r if k != "path"}):
                kinds = {type(r[key]) for r in rows if r.get(key) is not None}
                schema = models.PayloadSchemaType.INTEGER if kinds <= {int} else \
                    models.PayloadSchemaType.FLOAT if kinds <= {int, float} else models.PayloadSchemaType.KEYWORD
                client.create_payload_index(name, field_name=key, field_schema=schema)

    @staticmethod
    def _upsert(client: Any, name: str, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]],
                files: Optional[Sequence[Optional[FileRecord]]] = None) -> None:
        models = _models()
        files = list(files) if files is not None else [None] * len(ids)
        for start in range(0, len(ids), BATCH):
            part = slice(start, start + BATCH)
            points = [models.PointStruct(id=int(i), vector=v.tolist(), payload=_payload(r, f))
                      for i, v, r, f in zip(ids[part], vectors[part], rows[part], files[part])]
            client.upsert(name, points=points, wait=True)

    @staticmethod
    def _switch_alias(client: Any, alias: str, physical: str) -> None:
        models = _models()
        old = [a.collection_name for a in client.get_aliases().aliases if a.alias_name == alias]
        ops = [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))] if old else []
        alias_op = models.CreateAlias(collection_name=physical, alias_name=alias)
        ops.append(models.CreateAliasOperation(create_alias=alias_op))
        client.update_collection_aliases(change_aliases_operations=ops)  # one atomic switch
        for name in old:
            client.delete_collection(name)

    @classmethod
    def open(cls, folder: Path, manifest: Mapping[str, Any], wait: float = 600.0) -> "QdrantBackend":
        info = manifest.get("qdrant") or {}
        if not isinstance(info, dict) or not info.get("collection"):
            raise BinderInputError(f"{str(folder / 'index.json')!r} is damaged: no qdrant collection recorded")
        if info.get("local") and not (folder / info["local"]).is_dir():
            raise BinderInputError(f"index {str(folder)!r} is damaged or half-written: "
                                   "its local qdrant folder is missing")
        client = connect(folder, info.get("url"), wait)
        if not client.collection_exists(info["collection"]):
            client.close()
            raise BinderInputError(f"qdrant collection {info['collection']!r} of index {str(folder)!r} does not exist "
                                   f"at {info.get('url') or 'the local folder'}")
        return cls(client, info["collection"], manifest.get("columns", ["path"]), info.get("url"))

    # ----- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        if self._count is None:
            self._count = int(self.client.count(self.alias, exact=True).count)
        return self._count

    def columns(self) -> List[str]:
        return list(self._columns)

    def rows(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        wanted = sorted({int(i) for i in ids if int(i) >= 0})
        out: Dict[int, Dict[str, Any]] = {}
        for start in range(0, len(wanted), 1000):
            for rec in self.client.retrieve(self.alias, ids=wanted[start : start + 1000], with_payload=True):
                row = dict(rec.payload or {})
                row.pop(FILE_KEY, None)
                out[int(rec.id)] = row
        return out

    def file_record(self, item_id: int) -> Optional[FileRecord]:
        found = self.client.retrieve(self.alias, ids=[int(item_id)], with_payload=[FILE_KEY])
        record = (found[0].payload or {}).get(FILE_KEY) if found else None
        return FileRecord(str(record[0]), int(record[1]), int(record[2])) if isinstance(record, list) and \
            len(record) == 3 else None

    def hit_rows(self, ids: Sequence[int]) -> Dict[int, Tuple[str, Mapping[str, Any]]]:
        return {i: (row.pop("path"), MappingProxyType({c: v for c, v in row.items() if v is not None}))
                for i, row in self.rows(ids).items()}

    def missing(self, ids: Sequence[int]) -> List[int]:
        present = self.rows(ids)
        return [int(i) for i in ids if int(i) not in present]

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> Tuple[np.ndarray, np.ndarray]:
        models = _models()
        flt = to_filter(where)
        requests = [models.QueryRequest(query=q.tolist(), limit=k, filter=flt, with_payload=False) for q in queries]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, response in enumerate(self.client.query_batch_points(self.alias, requests=requests)):
            for col, point in enumerate(response.points[:k]):
                scores[row, col], ids[row, col] = point.score, int(point.id)
        return scores, ids

    # ----- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator["QdrantBackend"]:
        yield self  # each add/delete is one request to the collection

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]],
            files: Optional[Sequence[Optional[FileRecord]]] = None) -> None:
        self._upsert(self.client, self.alias, ids, vectors, rows, files)
        self._columns = sorted(set(self._columns) | {k for r in rows for k in r})
        self._count = None

    def delete(self, ids: Sequence[int]) -> None:
        models = _models()
        self.client.delete(self.alias, points_selector=models.PointIdsList(points=[int(i) for i in ids]), wait=True)
        self._count = None

    def follow(self, manifest: Mapping[str, Any]) -> None:
        """Another process wrote to the collection: forget what was cached of it."""
        self._columns, self._count = list(manifest.get("columns", self._columns)), None

    def finish(self, requested_kind: str) -> Dict[str, Any]:
        return {"columns": self._columns}

    def drop_other_generations(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()
