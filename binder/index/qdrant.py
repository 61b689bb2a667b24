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
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from binder.errors import BinderInputError
from binder.index.store import Where

log = logging.getLogger(__name__)

LOCAL_DIR = "qdrant"
BATCH = 256


def _models() -> Any:
    from qdrant_client import models

    return models


def connect(folder: Path, url: Optional[str]) -> Any:
    """A client for ``url`` (a server or cluster), or local mode in ``folder/qdrant``."""
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise BinderInputError("engine='qdrant' needs qdrant-client: pip install 'binder-embed[qdrant]'") from None
    if url:
        return QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"), timeout=60)
    return QdrantClient(path=str(folder / LOCAL_DIR))


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


def _payload(row: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if v is not None}


class QdrantBackend:
    """One alias of a Qdrant collection."""

    name = "qdrant"

    def __init__(self, client: Any, alias: str, columns: List[str], url: Optional[str]) -> None:
        self.client, self.alias, self._columns, self.url = client, alias, list(columns), url

    @classmethod
    def build(cls, tmp: Path, final: Path, dim: int, ids: np.ndarray, vectors: np.ndarray,
              rows: Sequence[Mapping[str, Any]], url: Optional[str] = None, collection: Optional[str] = None,
              **unused: Any) -> Dict[str, Any]:
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
            cls._upsert(client, physical, ids, vectors, rows)
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
    def _upsert(client: Any, name: str, ids: np.ndarray, vectors: np.ndarray,
                rows: Sequence[Mapping[str, Any]]) -> None:
        models = _models()
        for start in range(0, len(ids), BATCH):
            points = [models.PointStruct(id=int(i), vector=v.tolist(), payload=_payload(r))
                      for i, v, r in zip(ids[start : start + BATCH], vectors[start : start + BATCH],
                                         rows[start : start + BATCH])]
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
    def open(cls, folder: Path, manifest: Mapping[str, Any]) -> "QdrantBackend":
        info = manifest.get("qdrant") or {}
        if not isinstance(info, dict) or not info.get("collection"):
            raise BinderInputError(f"{str(folder / 'index.json')!r} is damaged: no qdrant collection recorded")
        if info.get("local") and not (folder / info["local"]).is_dir():
            raise BinderInputError(f"index {str(folder)!r} is damaged or half-written: "
                                   "its local qdrant folder is missing")
        client = connect(folder, info.get("url"))
        if not client.collection_exists(info["collection"]):
            client.close()
            raise BinderInputError(f"qdrant collection {info['collection']!r} of index {str(folder)!r} does not exist "
                                   f"at {info.get('url') or 'the local folder'}")
        return cls(client, info["collection"], manifest.get("columns", ["path"]), info.get("url"))

    # ----- reading ----------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.client.count(self.alias, exact=True).count)

    def columns(self) -> List[str]:
        return list(self._columns)

    def rows(self, ids: Sequence[int]) -> Dict[int, Dict[str, Any]]:
        wanted = sorted({int(i) for i in ids if int(i) >= 0})
        out: Dict[int, Dict[str, Any]] = {}
        for start in range(0, len(wanted), 1000):
            for rec in self.client.retrieve(self.alias, ids=wanted[start : start + 1000], with_payload=True):
                out[int(rec.id)] = dict(rec.payload or {})
        return out

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

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: Sequence[Mapping[str, Any]]) -> None:
        self._upsert(self.client, self.alias, ids, vectors, rows)
        self._columns = sorted(set(self._columns) | {k for r in rows for k in r})

    def delete(self, ids: Sequence[int]) -> None:
        models = _models()
        self.client.delete(self.alias, points_selector=models.PointIdsList(points=[int(i) for i in ids]), wait=True)

    def finish(self, requested_kind: str) -> Dict[str, Any]:
        return {"columns": self._columns}

    def drop_other_generations(self) -> None:
        pass

    def close(self) -> None:
        self.client.close()
