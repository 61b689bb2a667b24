"""A persistent index of embeddings of any modality, searched with composed queries.

``idx = binder.Index.build(model, "photos/", modality="image", path="photos.idx")`` embeds every
item (:mod:`binder.index.items`), stores the vectors and the metadata (:mod:`binder.index.local`:
FAISS + SQLite in a folder; :mod:`binder.index.qdrant`: a Qdrant collection, local or a cluster)
and records the model's fingerprint and embedding size, so that a query from another model is
refused instead of returning nonsense. ``idx.search(image=..., audio=..., weights=..., k=10,
where=...)`` composes the query like :meth:`binder.BindModel.compose` (ImageBind's embedding
arithmetic, calibrated) and returns ids, scores and metadata.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from binder.errors import BinderInputError
from binder.files import atomic_folder, atomic_write, recover
from binder.index.items import EmbedReport, embed_items, gather
from binder.index.hits import Hits, hits_from_rows
from binder.index.store import Where
from binder.types import modality_name

log = logging.getLogger(__name__)

FORMAT, VERSION, MANIFEST = "binder-index", 1, "index.json"


@dataclass
class IndexReport:
    """What a build or an add did: how many were indexed, which were skipped and why."""

    indexed: int
    skipped: List[tuple]
    ids: List[int]

    def summary(self) -> str:
        return f"indexed {self.indexed}, skipped {len(self.skipped)}"


def read_manifest(path: Path) -> Dict[str, Any]:
    """``index.json`` of an index folder, checked (every problem: one clear error)."""
    file = path / MANIFEST
    if not path.exists():
        raise BinderInputError(f"index {str(path)!r} does not exist (build it with binder.Index.build or "
                               "`binder index build`)")
    if not file.is_file():
        raise BinderInputError(f"{str(path)!r} is not a binder index: {MANIFEST} is missing (a half-written or "
                               "foreign folder)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BinderInputError(f"{str(file)!r} is damaged: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BinderInputError(f"{str(file)!r} is not a binder index description (format must be {FORMAT!r})")
    if int(manifest.get("version", 0)) > VERSION:
        raise BinderInputError(f"index {str(path)!r} was written by a newer binder (version {manifest['version']})")
    for key, kind in (("dim", int), ("modality", str), ("model", dict), ("engine", str), ("next_id", int)):
        if not isinstance(manifest.get(key), kind):
            raise BinderInputError(f"{str(file)!r} is damaged: {key!r} must be a {kind.__name__}")
    return manifest


def model_record(model: Any, modality: str) -> Dict[str, Any]:
    """What an index records of the model that embedded it."""
    return {"fingerprint": model.fingerprint(modality), "anchor_fingerprint": model.anchor.fingerprint(),
            "embed_dim": int(model.anchor.embed_dim), "source": str(getattr(model, "name_or_path", "") or "")}


def open_backend(path: Path, manifest: Dict[str, Any], verify: bool) -> Any:
    if manifest["engine"] == "faiss":
        from binder.index.local import LocalBackend

        return LocalBackend.open(path, manifest, verify)
    if manifest["engine"] == "qdrant":
        from binder.index.qdrant import QdrantBackend

        return QdrantBackend.open(path, manifest)
    raise BinderInputError(f"index {str(path)!r} uses engine {manifest['engine']!r}, which this binder lacks")


class Index:
    """An index folder opened for search and updates. Build one with :meth:`build`, open one
    with :meth:`open`."""

    def __init__(self, path: Path, manifest: Dict[str, Any], backend: Any, model: Any = None) -> None:
        self.path, self.manifest, self.backend = path, manifest, backend
        self.model = None
        self.report: Optional[IndexReport] = None
        if model is not None:
            self.attach(model)

    # ----- properties ---------------------------------------------------------------------------

    @property
    def modality(self) -> str:
        return self.manifest["modality"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def __len__(self) -> int:
        return self.backend.count()

    def __repr__(self) -> str:
        return (f"Index({str(self.path)!r}, {self.modality}, {len(self)} items, {self.manifest['engine']} "
                f"{self.manifest.get('kind', '')})")

    def info(self) -> Dict[str, Any]:
        """The index's description (``index.json``) with its live item count and columns."""
        return {**self.manifest, "count": len(self), "columns": self.backend.columns()}

    # ----- model ------------------------------------------------------------------------------

    def attach(self, model: Any) -> "Index":
        """Use ``model`` for queries; refused unless it embeds into this index's space.

        Raises:
            BinderInputError: another embedding size, another anchor, or another encoder of the
                indexed modality than the index was built with.
        """
        rec = self.manifest["model"]
        dim = int(model.anchor.embed_dim)
        if dim != self.dim:
            raise BinderInputError(f"index {str(self.path)!r} holds {self.dim}-d embeddings; this model makes {dim}-d "
                                   "ones: query it with the model it was built with")
        if model.anchor.fingerprint() != rec.get("anchor_fingerprint") or (
                self.modality in model.modalities and model.fingerprint(self.modality) != rec.get("fingerprint")):
            raise BinderInputError(
                f"index {str(self.path)!r} was built with another model (fingerprint {rec.get('fingerprint', '')[:12]}"
                f"{', ' + rec['source'] if rec.get('source') else ''}); this one embeds {self.modality} differently "
                "(its embeddings are not comparable): use the model the index was built with, or rebuild the index")
        self.model = model
        return self

    def _model(self, model: Any) -> Any:
        if model is not None:
            self.attach(model)
        if self.model is None:
            raise BinderInputError("this index has no model to embed queries with: Index.open(path, model=...) or "
                                   "search(..., model=...)")
        return self.model

    # ----- building and opening ---------------------------------------------------------------

    @classmethod
    def build(cls, model: Any, items: Any, modality: str = "image", path: "str | Path" = "index", *,
              engine: str = "faiss", kind: str = "auto", batch_size: int = 64, num_workers: int = 2,
              progress: bool = True, **engine_options: Any) -> "Index":
        """Embed ``items`` (files, folders or a manifest; see :func:`binder.index.items.gather`)
        and write a new index to ``path``, replacing any index there only once it is complete.

        Args:
            model: The model that embeds the items (and, later, the queries).
            items: Paths of files, folders or a CSV/JSONL manifest, or a list of them.
            modality: What the items are (``image``, ``audio``, ``text``, ...).
            path: The index folder.
            engine: ``faiss`` (embedded) or ``qdrant`` (``url=`` a cluster, or local mode).
            kind: ``auto`` (exact below 100k items, an inverted file above), ``flat``, ``ivf`` or ``hnsw`` (faiss).
            batch_size, num_workers: Bulk embedding (DataLoader) settings.
            progress: Show a progress bar.
            **engine_options: Backend options (qdrant: ``url``, ``api_key``, ``collection``).

        Returns:
            The open index; ``index.report`` lists what was indexed and skipped.
        """
        modality = modality_name(modality)
        if modality not in model.modalities:
            raise model._missing(modality)
        path = Path(path).expanduser().absolute()
        report = embed_items(model, modality, gather(items, modality), batch_size, num_workers, progress)
        if not report.count:
            raise BinderInputError(f"no {modality} item could be read, nothing was indexed: "
                                   + "; ".join(f"{p}: {r}" for p, r in report.skipped[:5]))
        return cls.from_embeddings(model, report, modality, path, engine=engine, kind=kind, **engine_options)

    @classmethod
    def from_embeddings(cls, model: Any, report: EmbedReport, modality: str, path: Path, *, engine: str = "faiss",
                        kind: str = "auto", **engine_options: Any) -> "Index":
        """Write an index of already-embedded items (``report``: items + (N, D) vectors)."""
        ids = np.arange(report.count, dtype=np.int64)
        rows = [it.row() for it in report.items]
        now = dt.datetime.now().isoformat(timespec="seconds")
        manifest = {"format": FORMAT, "version": VERSION, "modality": modality, "dim": int(report.vectors.shape[1]),
                    "model": model_record(model, modality), "next_id": report.count, "requested_kind": kind,
                    "created": now, "updated": now}
        with atomic_folder(path) as tmp:
            if engine == "faiss":
                from binder.index.engine import resolve_kind
                from binder.index.local import LocalBackend

                backend = LocalBackend.create(tmp, manifest["dim"], resolve_kind(kind, report.count))
                backend.add(ids, report.vectors, rows)
                manifest.update(backend.finish(kind))
                backend.close()
            elif engine == "qdrant":
                from binder.index.qdrant import QdrantBackend

                manifest.update(QdrantBackend.build(tmp, path, manifest["dim"], ids, report.vectors, rows,
                                                    **engine_options))
            else:
                raise BinderInputError(f"engine must be 'faiss' or 'qdrant', got {engine!r}")
            atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=2))
        index = cls.open(path, model, verify=False)
        index.report = IndexReport(report.count, report.skipped, ids.tolist())
        log.info("index %s: %s", path, index.report.summary())
        return index

    @classmethod
    def open(cls, path: "str | Path", model: Any = None, *, verify: bool = True) -> "Index":
        """Open an index folder; with ``model``, ready for :meth:`search` (checked against it).

        Args:
            path: The index folder.
            model: The model it was built with (a model, or anything :func:`binder.load` takes).
            verify: Check the files' SHA-256 digests (sizes are always checked).
        """
        path = Path(path).expanduser().absolute()
        recover(path)
        manifest = read_manifest(path)
        if model is not None and not isinstance(model, torch.nn.Module):
            from binder.io import load

            model = load(model)
        return cls(path, manifest, open_backend(path, manifest, verify), model)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- updates ----------------------------------------------------------------------------

    def add(self, items: Any, *, model: Any = None, batch_size: int = 64, num_workers: int = 2,
            progress: bool = True) -> IndexReport:
        """Embed more items and add them (new ids); the index on disk changes in one step."""
        model = self._model(model)
        return self.add_embeddings(embed_items(model, self.modality, gather(items, self.modality), batch_size,
                                               num_workers, progress))

    def add_embeddings(self, report: EmbedReport) -> IndexReport:
        """Add already-embedded items (``report``: items + (N, D) unit vectors from this index's model)."""
        if report.count and report.vectors.shape != (report.count, self.dim):
            raise BinderInputError(f"embeddings must be ({report.count}, {self.dim}) for this index, "
                                   f"got {tuple(report.vectors.shape)}")
        ids = np.arange(self.manifest["next_id"], self.manifest["next_id"] + report.count, dtype=np.int64)
        if report.count:
            self._write(lambda w: w.add(ids, report.vectors, [it.row() for it in report.items]),
                        next_id=int(self.manifest["next_id"]) + report.count)
        self.report = IndexReport(report.count, report.skipped, ids.tolist())
        return self.report

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many.

        Raises:
            BinderInputError: no ids, or ids that are not in the index (nothing is deleted then).
        """
        try:
            wanted = sorted({int(i) for i in ids})
        except (TypeError, ValueError):
            raise BinderInputError(f"ids must be integers, got {ids!r}") from None
        if not wanted:
            raise BinderInputError("delete(): no ids given")
        missing = self.backend.missing(wanted)
        if missing:
            raise BinderInputError(f"id(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} are not in index "
                                   f"{str(self.path)!r}; nothing was deleted")
        self._write(lambda w: w.delete(wanted))
        return len(wanted)

    def _write(self, change: Any, **fields: Any) -> None:
        """Apply ``change`` to a new generation and publish it (faiss), or to the collection (qdrant)."""
        from binder.index.local import locked

        with locked(self.path):
            try:
                with self.backend.writing() as writer:
                    change(writer)
                    described = writer.finish(self.manifest.get("requested_kind", "auto"))
                    manifest = {**self.manifest, **described, **fields,
                                "updated": dt.datetime.now().isoformat(timespec="seconds")}
                    atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=2))
            except BaseException:
                self.backend.close()  # the old generation is intact on disk: reopen it
                self.backend = open_backend(self.path, self.manifest, verify=False)
                raise
            if writer is not self.backend:  # faiss: a new generation replaces the old one
                self.backend.close()
            self.manifest, self.backend = manifest, writer
            writer.drop_other_generations()

    # ----- search -----------------------------------------------------------------------------

    def search(self, image: Any = None, audio: Any = None, text: Any = None, *, weights: Any = None, k: int = 10,
               where: Where = None, model: Any = None, sample_rate: Optional[float] = None,
               **inputs: Any) -> "Hits | List[Hits]":
        """Search with a query composed of any modalities the model embeds.

        ``idx.search(image="cat.jpg", audio="meow.wav", weights=[0.5, 0.5], k=10, where={"folder": "pets"})``

        Args:
            image, audio, text, **inputs: One query input per modality (or lists of equal length
                for several queries).
            weights: Contributions per given modality, in the order given (or a dict); None: equal.
            k: Hits per query.
            where: A metadata filter: ``{column: value or [values]}`` or an SQL expression.
            model: The model to embed the query with (default: the one the index was opened with).
            sample_rate: Rate of raw waveforms given without one.

        Returns:
            The :class:`Hits` of the query (a list of them for several queries).
        """
        query = {m: v for m, v in (("image", image), ("audio", audio), ("text", text), *inputs.items())
                 if v is not None}
        if not query:
            raise BinderInputError("search() needs a query: image=, audio=, text= or another modality the model embeds")
        single = all(not isinstance(v, list) for v in query.values())
        vectors = self._model(model).compose(query, weights, sample_rate=sample_rate)
        hits = self.search_embeddings(vectors, k=k, where=where)
        return hits[0] if single else hits

    def search_embeddings(self, queries: Any, k: int = 10, where: Where = None) -> List[Hits]:
        """Search with ready query vectors (N, D) or (D,) -> one :class:`Hits` per query."""
        q = np.asarray(queries.detach().cpu() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim or not len(q):
            raise BinderInputError(f"queries must be (N, {self.dim}) for this index, got {q.shape}")
        if not np.isfinite(q.sum()):  # NaN or inf anywhere (or values too large for unit vectors)
            raise BinderInputError("queries hold NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BinderInputError(f"k must be a positive integer, got {k!r}")
        scores, ids = self.backend.search(q, int(k), where)  # (N, k) each; id -1: no hit
        if hasattr(self.backend, "hits"):  # a backend that makes result objects itself (faster)
            return self.backend.hits(scores, ids)
        return hits_from_rows(scores, ids, self.backend.hit_rows(ids[ids >= 0]))
