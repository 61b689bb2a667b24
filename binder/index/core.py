"""A persistent index of embeddings of any modality, searched with composed queries.

``idx = binder.Index.build(model, "photos/", modality="image", path="photos.idx")`` embeds every
item (:mod:`binder.index.items`), stores the vectors and the metadata in an engine
(:mod:`binder.index.engines`: FAISS + SQLite in the folder, or a Qdrant collection, local or a
cluster; any engine registered in :data:`~binder.index.engines.ENGINES`) and records the
model's fingerprint and embedding size (:mod:`binder.index.folder`), so that a query from another
model is refused instead of returning nonsense. ``idx.search(image=..., audio=..., depth=...,
weights=..., k=10, where=...)`` composes a query of any modalities the model embeds like
:meth:`binder.BindModel.compose` (ImageBind's embedding arithmetic, calibrated) and returns
:class:`~binder.index.hits.Hits`.

Writers take turns on the index's lock and re-read ``index.json`` under it, so nothing another
process published is lost; a write becomes visible in one step when ``index.json`` is replaced.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from binder.errors import BinderIndexError, BinderInputError
from binder.files import atomic_folder, atomic_write, clean_stale, exclusive, recover
from binder.index.engines import Where, engine_class
from binder.index.folder import (
    FORMAT,
    MANIFEST,
    VERSION,
    check_ids,
    check_k,
    check_target,
    model_record,
    read_manifest,
    stamp,
)
from binder.index.hits import Hits
from binder.index.items import EmbedReport, Item, embed_items, gather
from binder.types import modality_name

log = logging.getLogger(__name__)

WAIT = 600.0  # seconds a writer waits for another writer of the same index before giving up


@dataclass
class IndexReport:
    """What a build or an add did: how many were indexed, which were skipped and why."""

    indexed: int
    skipped: List[tuple]
    ids: List[int]

    def summary(self) -> str:
        return f"indexed {self.indexed}, skipped {len(self.skipped)}"


def open_engine(path: Path, manifest: Dict[str, Any], verify: bool, wait: float = WAIT) -> Any:
    """The engine ``index.json`` names, opened on the folder."""
    return engine_class(manifest["engine"]).open(path, manifest, verify=verify, wait=wait)


def _open_current(path: Path, verify: bool, wait: float, attempts: int = 5) -> tuple:
    """(manifest, engine) of the current generation; a writer that publishes (and removes the old
    generation's files) between reading ``index.json`` and opening its files makes this try again."""
    for attempt in range(attempts):
        manifest = read_manifest(path)
        try:
            return manifest, open_engine(path, manifest, verify, wait)
        except BinderIndexError:
            if attempt == attempts - 1 or read_manifest(path) == manifest:
                raise
    raise AssertionError("unreachable")


class Index:
    """An index folder opened for search and updates. Build one with :meth:`build`, open one
    with :meth:`open`."""

    def __init__(self, path: Path, manifest: Dict[str, Any], engine: Any, model: Any = None) -> None:
        self.path, self.manifest, self.engine = path, manifest, engine
        self._stamp = stamp(path)
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
        return self.engine.count()

    def __repr__(self) -> str:
        return (f"Index({str(self.path)!r}, {self.modality}, {len(self)} items, {self.manifest['engine']} "
                f"{self.manifest.get('kind', '')})")

    def info(self) -> Dict[str, Any]:
        """The index's description (``index.json``) with its live item count and columns."""
        return {**self.manifest, "count": len(self), "columns": self.engine.columns()}

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
              progress: bool = True, overwrite: bool = False, wait: float = WAIT, **engine_options: Any) -> "Index":
        """Embed ``items`` (files, folders or a manifest; see :func:`binder.index.items.gather`)
        and write a new index to ``path``, replacing an index there (with ``overwrite``) only once
        the new one is complete.

        Args:
            model: The model that embeds the items (and, later, the queries).
            items: Paths of files, folders or a CSV/JSONL manifest, or a list of them.
            modality: What the items are (``image``, ``audio``, ``text``, ...).
            path: The index folder: a new path, an empty folder, or an existing index (``overwrite``).
            engine: ``faiss`` (embedded) or ``qdrant`` (``url=`` a cluster, or local mode).
            kind: ``auto`` (exact below 100k items, an inverted file above), ``flat``, ``ivf`` or ``hnsw`` (faiss).
            batch_size, num_workers: Bulk embedding (DataLoader) settings.
            progress: Show a progress bar.
            overwrite: Replace an existing index at ``path``; anything else there is always refused.
            wait: Seconds to wait for another process writing the same index.
            **engine_options: Backend options (qdrant: ``url``, ``api_key``, ``collection``).

        Returns:
            The open index; ``index.report`` lists what was indexed and skipped.
        """
        modality = modality_name(modality)
        if modality not in model.modalities:
            raise model._missing(modality)
        path = Path(path).expanduser().absolute()
        check_target(path, overwrite)  # before the embedding work; checked again when publishing
        report = embed_items(model, modality, gather(items, modality), batch_size, num_workers, progress)
        if not report.count:
            raise BinderInputError(f"no {modality} item could be read, nothing was indexed: "
                                   + "; ".join(f"{p}: {r}" for p, r in report.skipped[:5]))
        return cls.from_embeddings(model, report, modality, path, engine=engine, kind=kind, overwrite=overwrite,
                                   wait=wait, **engine_options)

    @classmethod
    def from_embeddings(cls, model: Any, report: EmbedReport, modality: str, path: "str | Path", *,
                        engine: str = "faiss", kind: str = "auto", overwrite: bool = False, wait: float = WAIT,
                        **engine_options: Any) -> "Index":
        """Write an index of already-embedded items (``report``: items + (N, D) vectors); the same
        rules for ``path`` as :meth:`build`."""
        path = Path(path).expanduser().absolute()
        cls_ = engine_class(engine)  # a registered engine, or one clear error before anything is written
        ids = np.arange(report.count, dtype=np.int64)
        now = dt.datetime.now().isoformat(timespec="seconds")
        manifest = {"format": FORMAT, "version": VERSION, "modality": modality, "dim": int(report.vectors.shape[1]),
                    "model": model_record(model, modality), "next_id": report.count, "requested_kind": kind,
                    "created": now, "updated": now}
        with exclusive(path, f"index {str(path)!r}", wait):
            check_target(path, overwrite)  # what is there now, after the embedding work
            with atomic_folder(path) as tmp:  # removes temporaries and swapped-aside folders of dead writers
                new = cls_.create(tmp, path, manifest["dim"], kind, engine_options)
                try:
                    with new.writing() as writer:
                        writer.add(ids, report.vectors, [it.row() for it in report.items],
                                   [it.file for it in report.items])
                        manifest.update(writer.finish(kind))
                finally:
                    new.close()
                atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=2))
        index = cls.open(path, model, verify=False, wait=wait)
        index.report = IndexReport(report.count, report.skipped, ids.tolist())
        log.info("index %s: %s", path, index.report.summary())
        return index

    @classmethod
    def open(cls, path: "str | Path", model: Any = None, *, verify: bool = True, wait: float = WAIT) -> "Index":
        """Open an index folder; with ``model``, ready for :meth:`search` (checked against it).

        Args:
            path: The index folder.
            model: The model it was built with (a model, or anything :func:`binder.load` takes).
            verify: Check the files' SHA-256 digests (sizes are always checked).
            wait: Seconds to wait for a Qdrant local-mode folder that another process has open.
        """
        path = Path(path).expanduser().absolute()
        recover(path)
        if isinstance(model, (str, os.PathLike)):
            from binder.io import load

            model = load(model)
        manifest, engine = _open_current(path, verify, wait)
        return cls(path, manifest, engine, model)

    def refresh(self) -> bool:
        """Follow writes other processes published since this index was opened (a search sees the
        state of when the index was opened or last refreshed). Cheap when nothing changed (one
        ``stat``); returns whether anything did."""
        now = stamp(self.path)
        if now == self._stamp:
            return False
        for attempt in range(5):  # the files of what was read may be replaced meanwhile: read again
            manifest = read_manifest(self.path)
            try:
                self.engine = self.engine.follow(manifest)  # searches under way keep what they started on
                break
            except BinderIndexError:
                if attempt == 4:
                    raise
        self.manifest, self._stamp = manifest, now
        if self.model is not None:
            self.attach(self.model)
        return True

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- updates ----------------------------------------------------------------------------

    def add(self, items: Any, *, model: Any = None, batch_size: int = 64, num_workers: int = 2,
            progress: bool = True, wait: float = WAIT) -> IndexReport:
        """Embed more items and add them (new ids); the index on disk changes in one step."""
        model = self._model(model)
        report = embed_items(model, self.modality, gather(items, self.modality), batch_size, num_workers, progress)
        return self.add_embeddings(report, wait=wait)

    def add_embeddings(self, report: EmbedReport, *, wait: float = WAIT) -> IndexReport:
        """Add already-embedded items (``report``: items + (N, D) unit vectors from this index's model).
        Ids are given under the index's lock, after any other writer's items."""
        if report.count and report.vectors.shape != (report.count, self.dim):
            raise BinderInputError(f"embeddings must be ({report.count}, {self.dim}) for this index, "
                                   f"got {tuple(report.vectors.shape)}")
        added: List[int] = []

        def change(writer: Any, manifest: Dict[str, Any]) -> Dict[str, Any]:
            start = int(manifest["next_id"])
            ids = np.arange(start, start + report.count, dtype=np.int64)
            writer.add(ids, report.vectors, [it.row() for it in report.items], [it.file for it in report.items])
            added.extend(ids.tolist())
            return {"next_id": start + report.count}

        if report.count:
            self._write(change, wait)
        self.report = IndexReport(report.count, report.skipped, added)
        return self.report

    def delete(self, ids: Sequence[int], *, wait: float = WAIT) -> int:
        """Remove items by id; returns how many.

        Raises:
            BinderInputError: no ids, or ids that are not in the index (nothing is deleted then).
        """
        wanted = check_ids(ids)
        if not wanted:
            raise BinderInputError("delete(): no ids given")

        def change(writer: Any, manifest: Dict[str, Any]) -> Dict[str, Any]:
            missing = writer.missing(wanted)
            if missing:
                raise BinderInputError(f"id(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} are not in index "
                                       f"{str(self.path)!r}; nothing was deleted")
            writer.delete(wanted)
            return {}

        self._write(change, wait)
        return len(wanted)

    def _write(self, change: Callable[[Any, Dict[str, Any]], Dict[str, Any]], wait: float) -> None:
        """Under the index's lock: follow what other writers published, apply ``change(writer,
        manifest)`` where readers cannot see it, publish ``index.json``: readers see all or nothing."""
        with exclusive(self.path, f"index {str(self.path)!r}", wait):
            clean_stale(self.path)  # what killed writers left beside the folder
            self._follow()
            try:
                with self.engine.writing() as writer:
                    fields = change(writer, self.manifest)
                    described = writer.finish(self.manifest.get("requested_kind", "auto"))
                    manifest = {**self.manifest, **described, **fields,
                                "updated": dt.datetime.now().isoformat(timespec="seconds")}
                    atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=2))
            except BaseException:
                self.engine.close()  # what was published is intact: reopen it
                self.engine = open_engine(self.path, self.manifest, verify=False, wait=wait)
                raise
            self.manifest, self.engine, self._stamp = manifest, writer.published(manifest), stamp(self.path)

    def _follow(self) -> None:
        """(Holding the lock) re-read ``index.json``; follow what another writer published, refusing
        to write into an index that was rebuilt with another model, modality or engine."""
        manifest = read_manifest(self.path)
        if manifest == self.manifest:
            return
        same = ("modality", "dim", "engine")
        if any(manifest[key] != self.manifest[key] for key in same) or \
                manifest["model"].get("fingerprint") != self.manifest["model"].get("fingerprint"):
            raise BinderIndexError(f"index {str(self.path)!r} was rebuilt by another process (another model, modality "
                                   "or engine) since it was opened here; nothing was written: open it again")
        log.info("index %s changed since it was opened: following what was published", self.path)
        self.engine, self.manifest = self.engine.follow(manifest), manifest

    # ----- search -----------------------------------------------------------------------------

    def search(self, *, weights: Any = None, k: int = 10, where: Where = None, model: Any = None,
               sample_rate: Optional[float] = None, enrollments: Sequence[Any] = (), **query: Any) -> Hits:
        """Search with one query composed of any modalities the model embeds.

        ``idx.search(image="cat.jpg", audio="meow.wav", weights=[0.5, 0.5], k=10, where={"folder": "pets"})``,
        ``idx.search(depth="scan.npy")``, ``idx.search(text="a dog", tactile=pressure_map)``.

        Args:
            **query: One input per modality (``image=``, ``text=``, ``audio=``, ``depth=``, a
                plugin's ``tactile=``, ...): a file, an array, ``(samples, rate)``, a string.
            weights: Contributions per given modality, in the order given (or a dict); None: equal.
            k: Hits (at most 10,000; fewer when the index holds fewer items).
            where: A metadata filter: ``{column: value or [values]}`` or an SQL expression.
            model: The model to embed the query with (default: the one the index was opened with).
            sample_rate: Rate of raw waveforms given without one.
            enrollments: :func:`binder.enroll` corrections of the query's sources (e.g. its
                speaker), made with the model.

        Returns:
            The :class:`Hits` of the query, best first. For several queries at once see
            :meth:`search_many`.
        """
        check_k(k)  # before the query is embedded
        if not query:
            raise BinderInputError("search() needs a query: image=, text=, audio= or another modality the model "
                                   "embeds, e.g. depth=")
        lists = [m for m, v in query.items() if isinstance(v, list)]
        if lists:
            raise BinderInputError(f"search() takes one query; {lists} hold lists: use search_many() for several")
        return self.search_many(weights=weights, k=k, where=where, model=model, sample_rate=sample_rate,
                                enrollments=enrollments, **{m: [v] for m, v in query.items()})[0]

    def search_many(self, *, weights: Any = None, k: int = 10, where: Where = None, model: Any = None,
                    sample_rate: Optional[float] = None, enrollments: Sequence[Any] = (),
                    **queries: Any) -> List[Hits]:
        """Several queries at once: ``{modality: list of inputs}`` (lists of equal length, or of one
        input shared by all) -> one :class:`Hits` per query, in order."""
        check_k(k)
        query = {modality_name(m): v for m, v in queries.items() if v is not None}
        if not query:
            raise BinderInputError("search_many() needs queries: image=[...], text=[...] or another modality's list")
        vectors = self._model(model).compose(query, weights, sample_rate=sample_rate, enrollments=enrollments)
        return self.search_embeddings(vectors, k=k, where=where)

    def search_embeddings(self, queries: Any, k: int = 10, where: Where = None) -> List[Hits]:
        """Search with ready query vectors (N, D) or (D,) -> one :class:`Hits` per query."""
        q = np.asarray(queries.detach().cpu() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim or not len(q):
            raise BinderInputError(f"queries must be (N, {self.dim}) for this index, got {q.shape}")
        if not np.isfinite(q.sum()):  # NaN or inf anywhere (or values too large for unit vectors)
            raise BinderInputError("queries hold NaN or infinite values")
        engine = self.engine  # one state for the whole search, whatever refresh() does meanwhile
        k = min(check_k(k), engine.count())  # never more hits than items: nothing larger is allocated
        if not k:
            return [Hits([]) for _ in range(len(q))]
        scores, ids = engine.search(q, k, where)  # (N, k) each; id -1: no hit
        return engine.hits(scores, ids)

    # ----- items ------------------------------------------------------------------------------

    def get(self, item_id: int) -> Item:
        """The indexed item ``item_id``: its path (or text), metadata and file record.

        Raises:
            BinderInputError: no such item.
        """
        item_id = check_ids([item_id])[0]
        rows = self.engine.rows([item_id])
        if item_id not in rows:
            raise BinderInputError(f"no item {item_id} in index {str(self.path)!r}")
        row = dict(rows[item_id])
        return Item(str(row.pop("path")), row, self.engine.file_record(item_id))

    def file(self, item_id: int) -> Path:
        """The file of item ``item_id``, only while it is the very file that was indexed: the
        same real path (symbolic links resolved), size and modification time as recorded.

        Raises:
            BinderInputError: no such item, an item that is not a file, an index that recorded no
                files (built by binder before 0.3: rebuild it), or a file that changed or moved.
        """
        item = self.get(item_id)
        if item.file is None:
            raise BinderInputError(f"item {item_id} of index {str(self.path)!r} has no recorded file (text items, "
                                   "and indexes built before binder recorded files, have none)")
        if not item.file.matches(item.path):
            raise BinderInputError(f"the file of item {item_id} changed since it was indexed (its size, time or "
                                   "where it resolves differ); add it to the index again")
        return Path(item.file.real)
