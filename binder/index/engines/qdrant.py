"""The ``qdrant`` index engine: a Qdrant collection (https://qdrant.tech), local or a cluster.

Qdrant rather than Milvus: its Python client has a *local mode* (the same client API on files,
in-process, nothing else to install or run), so this engine is tested against the very code path
a cluster uses; its payload filters map one-to-one onto binder's ``where`` dicts; and collection
*aliases* give atomic rebuilds on a live cluster. Point it at a cluster with ``url=`` (``binder
index build --engine qdrant --url https://host:6333``; an API key comes from ``$QDRANT_API_KEY``
and is never written to disk); without a URL the collection lives in local mode inside the index
folder. Either way the folder holds ``index.json``, so model checks are the same as for FAISS.

How a write stays one step for readers:

- A build writes a new physical collection ``<name>-<generation>`` and moves the alias ``<name>``
  onto it in one operation; a build that dies leaves the alias on the previous one.
- Every point carries its id in the payload (``_id``, indexed), and every search and count keeps
  ``_id < next_id`` of the ``index.json`` the reader opened. An add writes points above
  ``next_id`` (invisible), and becomes visible at once when ``index.json`` with the new
  ``next_id`` is published. Points a killed add left above ``next_id`` are removed by the next write.
- A delete is one request for all its ids, applied by Qdrant as one operation.

SQL ``where`` strings need the faiss engine: here ``where`` is a dict. Qdrant's local mode
serves one process at a time (its own lock on the folder).
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

from binder.errors import BinderIndexError, BinderInputError, BinderLockError, MissingDependencyError
from binder.files import FileRecord
from binder.index.engines import ENGINES, Where
from binder.index.hits import hits_from_rows

log = logging.getLogger(__name__)

LOCAL_DIR = "qdrant"
BATCH = 256
ID_KEY, FILE_KEY = "_id", "_file"  # payload keys of binder's own (not metadata)
OPTIONS = ("url", "collection")


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
        raise MissingDependencyError("qdrant-client", "engine='qdrant'", "qdrant") from None
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


def to_filter(where: Where, below: Optional[int] = None) -> Any:
    """A ``where`` dict (equality, or any of a list) and the visible-id limit -> a Qdrant filter."""
    if where is not None and not isinstance(where, Mapping):
        raise BinderInputError(f"the qdrant engine filters with a dict of column -> value(s), got {where!r} (SQL "
                               "expressions need the faiss engine)")
    models = _models()
    must = [models.FieldCondition(key=ID_KEY, range=models.Range(lt=below))] if below is not None else []
    for key, value in (where or {}).items():
        match = models.MatchAny(any=list(value)) if isinstance(value, (list, tuple, set)) else \
            models.MatchValue(value=value)
        must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must) if must else None


def _payload(item_id: int, row: Mapping[str, Any], file: Optional[FileRecord]) -> Dict[str, Any]:
    payload = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if v is not None}
    payload[ID_KEY] = int(item_id)
    if file is not None:
        payload[FILE_KEY] = [file.real, file.size, file.mtime_ns]
    return payload


class QdrantEngine:
    """The collection behind one alias, seen up to ``next_id`` (``below``; None: an index made
    before binder recorded ids in the payload, read as a whole)."""

    name = "qdrant"

    def __init__(self, folder: Path, client: Any, alias: str, info: Dict[str, Any], columns: Sequence[str],
                 below: Optional[int]) -> None:
        self.folder, self.client, self.alias, self.info = folder, client, alias, info
        self._columns, self.below = list(columns), below
        self._count: Optional[int] = None
        self.building: Optional[str] = None  # the new physical collection of a build, until it is finished

    # ----- making and opening -----------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, target: Path, dim: int, kind: str, options: Mapping[str, Any]) -> "QdrantEngine":
        """A new physical collection (local mode: inside ``folder``, which becomes ``target``); the
        alias moves onto it when the build is finished."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise BinderInputError(f"unknown qdrant option(s) {unknown}: use url= and collection=")
        url = options.get("url")
        alias = options.get("collection") or target.name.replace(".", "-")
        client = connect(folder, url)
        names = [c.name for c in client.get_collections().collections]
        gens = [int(n.rsplit("-", 1)[1]) for n in names if n.startswith(alias + "-") and n.rsplit("-", 1)[1].isdigit()]
        generation = max(gens, default=-1) + 1
        physical = f"{alias}-{generation}"
        models = _models()
        params = models.VectorParams(size=dim, distance=models.Distance.COSINE)
        client.create_collection(physical, vectors_config=params)
        if url:  # payload indexes make filtered search fast on a server (local mode has none)
            client.create_payload_index(physical, field_name=ID_KEY, field_schema=models.PayloadSchemaType.INTEGER)
        info = {"url": url, "local": None if url else LOCAL_DIR, "collection": alias, "physical": physical,
                "generation": generation, "id_field": ID_KEY}
        engine = cls(folder, client, physical, info, ["path"], 0)
        engine.building = physical
        return engine

    @classmethod
    def open(cls, folder: Path, manifest: Mapping[str, Any], verify: bool = True,
             wait: float = 600.0) -> "QdrantEngine":
        info = manifest.get("qdrant") or {}
        if not isinstance(info, dict) or not info.get("collection"):
            raise BinderIndexError(f"{str(folder / 'index.json')!r} is damaged: no qdrant collection recorded")
        if info.get("local") and not (folder / info["local"]).is_dir():
            raise BinderIndexError(f"index {str(folder)!r} is damaged or half-written: its local qdrant folder is "
                                   "missing")
        client = connect(folder, info.get("url"), wait)
        if not client.collection_exists(info["collection"]):
            client.close()
            raise BinderIndexError(f"qdrant collection {info['collection']!r} of index {str(folder)!r} does not exist "
                                   f"at {info.get('url') or 'the local folder'}")
        below = int(manifest["next_id"]) if info.get("id_field") else None
        return cls(folder, client, info["collection"], dict(info), manifest.get("columns", ["path"]), below)

    def follow(self, manifest: Mapping[str, Any]) -> "QdrantEngine":
        """What another writer published: the same live collection, seen up to its ``next_id``."""
        if manifest.get("qdrant") != self.info:  # rebuilt: another physical collection behind the alias
            self.close()  # local mode: one client per folder
            return QdrantEngine.open(self.folder, manifest)
        self._columns = list(manifest.get("columns", self._columns))
        self.below = int(manifest["next_id"]) if self.info.get("id_field") else None
        self._count = None
        return self

    # ----- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        if self._count is None:
            self._count = int(self.client.count(self.alias, count_filter=to_filter(None, self.below),
                                                exact=True).count)
        return self._count

    def columns(self) -> List[str]:
        return list(self._columns)

    def _payloads(self, ids: Sequence[int], keys: Any = True) -> Dict[int, Dict[str, Any]]:
        wanted = sorted({int(i) for i in ids if int(i) >= 0 and (self.below is None or int(i) < self.below)})
        out: Dict[int, Dict[str, Any]] = {}
        for start in range(0, len(wanted), 1000):
            for rec in self.client.retrieve(self.alias, ids=wanted[start : start + 1000], with_payload=keys):
                out[int(rec.id)] = dict(rec.payload or {})
        return out

    def rows(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        return {i: {k: v for k, v in p.items() if k not in (ID_KEY, FILE_KEY)} for i, p in self._payloads(ids).items()}

    def file_record(self, item_id: int) -> Optional[FileRecord]:
        record = self._payloads([item_id], [FILE_KEY]).get(int(item_id), {}).get(FILE_KEY)
        return FileRecord(str(record[0]), int(record[1]), int(record[2])) if isinstance(record, list) and \
            len(record) == 3 else None

    def missing(self, ids: Sequence[int]) -> List[int]:
        present = self._payloads(ids, False)
        return [int(i) for i in ids if int(i) not in present]

    def search(self, queries: np.ndarray, k: int, where: Where = None) -> Tuple[np.ndarray, np.ndarray]:
        models = _models()
        flt = to_filter(where, self.below)
        requests = [models.QueryRequest(query=q.tolist(), limit=k, filter=flt, with_payload=False) for q in queries]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, response in enumerate(self.client.query_batch_points(self.alias, requests=requests)):
            for col, point in enumerate(response.points[:k]):
                scores[row, col], ids[row, col] = point.score, int(point.id)
        return scores, ids

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> List[Any]:
        rows = self.rows(ids[ids >= 0].tolist())
        return hits_from_rows(scores, ids, {i: (r.pop("path"), MappingProxyType(r)) for i, r in rows.items()})

    # ----- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator["QdrantEngine"]:
        """Writes to the collection itself, invisible to readers until published (see the module);
        first removes what a killed add left above ``next_id``."""
        if self.below is not None and not self.building:
            models = _models()
            above = models.Filter(must=[models.FieldCondition(key=ID_KEY, range=models.Range(gte=self.below))])
            self.client.delete(self.alias, points_selector=models.FilterSelector(filter=above), wait=True)
        yield self

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]],
            files: Optional[Sequence[Optional[FileRecord]]] = None) -> None:
        models = _models()
        files = list(files) if files is not None else [None] * len(ids)
        for start in range(0, len(ids), BATCH):
            part = slice(start, start + BATCH)
            points = [models.PointStruct(id=int(i), vector=v.tolist(), payload=_payload(i, r, f))
                      for i, v, r, f in zip(ids[part], vectors[part], rows[part], files[part])]
            self.client.upsert(self.alias, points=points, wait=True)
        self._columns = sorted(set(self._columns) | {k for r in rows for k in r})

    def delete(self, ids: Sequence[int]) -> None:
        models = _models()
        self.client.delete(self.alias, points_selector=models.PointIdsList(points=[int(i) for i in ids]), wait=True)

    def finish(self, requested_kind: str) -> Dict[str, Any]:
        """Move the alias onto a new build's collection (one operation) -> the ``index.json`` fields."""
        if self.building:
            self._switch_alias(self.info["collection"], self.building)
            self.alias, self.building = self.info["collection"], None
        return {"engine": self.name, "kind": "hnsw" if self.info.get("url") else "exact", "qdrant": dict(self.info),
                "columns": sorted(c for c in self._columns if not c.startswith("_")), "files": {}}

    def published(self, manifest: Mapping[str, Any]) -> "QdrantEngine":
        return self.follow(manifest)

    def _switch_alias(self, alias: str, physical: str) -> None:
        models = _models()
        old = [a.collection_name for a in self.client.get_aliases().aliases if a.alias_name == alias]
        ops = [models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))] if old else []
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=physical,
                                                                               alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)  # one atomic switch
        for name in old:
            self.client.delete_collection(name)

    def close(self) -> None:
        self.client.close()


ENGINES.register(QdrantEngine.name, QdrantEngine)
