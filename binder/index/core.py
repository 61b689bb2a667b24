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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from binder.errors import BinderInputError
from binder.files import atomic_folder, atomic_write, clean_stale, exclusive, recover
from binder.index.items import EmbedReport, Item, embed_items, gather
from binder.index.hits import Hits, hits_from_rows
from binder.index.store import Where
from binder.types import modality_name

log = logging.getLogger(__name__)

FORMAT, VERSION, MANIFEST = "binder-index", 1, "index.json"
WAIT = 600.0  # seconds a writer waits for another writer of the same index before giving up
MAX_K = 10_000  # the most hits one query may ask for (k is also capped at the index's size)
MAX_ID = 2 ** 63 - 1


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
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise BinderInputError(f"{str(file)!r} is damaged: {key!r} must be a {kind.__name__}")
    generation = manifest.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation <= MAX_ID:
        raise BinderInputError(f"{str(file)!r} is damaged: 'generation' must be a whole number >= 0, got "
                               f"{generation!r}")
    if not 0 < manifest["dim"] <= 65_536 or not 0 <= manifest["next_id"] <= MAX_ID:
        raise BinderInputError(f"{str(file)!r} is damaged: 'dim' or 'next_id' is out of range")
    return manifest


def is_index(path: Path) -> bool:
    """Whether ``path`` is a binder index folder (its ``index.json`` says so)."""
    try:
        return path.is_dir() and json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_target(path: Path, overwrite: bool) -> None:
    """A build may write to a new path, an empty folder, or (with ``overwrite``) an existing
    index; anything else at ``path`` is the user's and is refused, naming it."""
    if path.is_symlink():
        raise BinderInputError(f"{str(path)!r} is a symbolic link: give the index folder's own path (nothing was "
                               "written)")
    if not path.exists():
        return
    if not path.is_dir():
        raise BinderInputError(f"{str(path)!r} is a file, not a binder index: an index is written only to a new path "
                               "or over an existing index (nothing was written)")
    if is_index(path):
        if not overwrite:
            raise BinderInputError(f"index {str(path)!r} already exists: pass overwrite=True (binder index build "
                                   "--overwrite) to replace it, or add to it (binder index add)")
        return
    entries = sum(1 for _ in path.iterdir())
    if entries:
        raise BinderInputError(f"{str(path)!r} is a folder of {entries} entr{'y' if entries == 1 else 'ies'} that is "
                               "not a binder index: an index is written only to a new path, an empty folder or over "
                               "an existing index (nothing was written)")


def check_k(k: Any) -> int:
    """A whole number of hits from 1 to :data:`MAX_K`, or one clear error."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise BinderInputError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
    return int(k)


def check_ids(ids: Any) -> List[int]:
    """Item ids as sorted unique ints in [0, 2^63), or one clear error."""
    try:
        wanted = sorted({int(i) for i in ids})
    except (TypeError, ValueError):
        raise BinderInputError(f"ids must be whole numbers, got {ids!r}") from None
    bad = [i for i in wanted if not 0 <= i <= MAX_ID]
    if bad:
        raise BinderInputError(f"id(s) {bad[:5]} are out of range: item ids are whole numbers from 0 to 2^63 - 1")
    return wanted


def model_record(model: Any, modality: str) -> Dict[str, Any]:
    """What an index records of the model that embedded it."""
    return {"fingerprint": model.fingerprint(modality), "anchor_fingerprint": model.anchor.fingerprint(),
            "embed_dim": int(model.anchor.embed_dim), "source": str(getattr(model, "name_or_path", "") or "")}


def open_backend(path: Path, manifest: Dict[str, Any], verify: bool, wait: float = WAIT) -> Any:
    if manifest["engine"] == "faiss":
        from binder.index.local import LocalBackend

        return LocalBackend.open(path, manifest, verify)
    if manifest["engine"] == "qdrant":
        from binder.index.qdrant import QdrantBackend

        return QdrantBackend.open(path, manifest, wait)
    raise BinderInputError(f"index {str(path)!r} uses engine {manifest['engine']!r}, which this binder lacks")


def _stamp(path: Path) -> Optional[tuple]:
    """What identifies the current ``index.json`` (each publish writes a new file)."""
    try:
        st = os.stat(path / MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _open_current(path: Path, verify: bool, wait: float, attempts: int = 5) -> tuple:
    """(manifest, backend) of the current generation; a writer that publishes (and removes the old
    generation's files) between reading ``index.json`` and opening its files makes this try again."""
    for attempt in range(attempts):
        manifest = read_manifest(path)
        try:
            return manifest, open_backend(path, manifest, verify, wait)
        except BinderInputError:
            if attempt == attempts - 1 or read_manifest(path) == manifest:
                raise


def _write_new(tmp: Path, path: Path, dim: int, kind: str, engine: str, ids: np.ndarray, report: EmbedReport,
               rows: List[Dict[str, Any]], options: Dict[str, Any]) -> Dict[str, Any]:
    """Write a new index's vectors and metadata into ``tmp`` -> the ``index.json`` fields."""
    files = [it.file for it in report.items]
    if engine == "faiss":
        from binder.index.engine import resolve_kind
        from binder.index.local import LocalBackend

        backend = LocalBackend.create(tmp, dim, resolve_kind(kind, report.count))
        backend.add(ids, report.vectors, rows, files)
        described = backend.finish(kind)
        backend.close()
        return described
    if engine == "qdrant":
        from binder.index.qdrant import QdrantBackend

        return QdrantBackend.build(tmp, path, dim, ids, report.vectors, rows, files, **options)
    raise BinderInputError(f"engine must be 'faiss' or 'qdrant', got {engine!r}")


class Index:
    """An index folder opened for search and updates. Build one with :meth:`build`, open one
    with :meth:`open`."""

    def __init__(self, path: Path, manifest: Dict[str, Any], backend: Any, model: Any = None) -> None:
        self.path, self.manifest, self.backend = path, manifest, backend
        self._stamp = _stamp(path)
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
        ids = np.arange(report.count, dtype=np.int64)
        rows = [it.row() for it in report.items]
        now = dt.datetime.now().isoformat(timespec="seconds")
        manifest = {"format": FORMAT, "version": VERSION, "modality": modality, "dim": int(report.vectors.shape[1]),
                    "model": model_record(model, modality), "next_id": report.count, "requested_kind": kind,
                    "created": now, "updated": now}
        with exclusive(path, f"index {str(path)!r}", wait):
            check_target(path, overwrite)  # what is there now, after the embedding work
            with atomic_folder(path) as tmp:  # removes temporaries and swapped-aside folders of dead writers
                manifest.update(_write_new(tmp, path, manifest["dim"], kind, engine, ids, report, rows,
                                           engine_options))
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
        if model is not None and not isinstance(model, torch.nn.Module):
            from binder.io import load

            model = load(model)
        manifest, backend = _open_current(path, verify, wait)
        return cls(path, manifest, backend, model)

    def refresh(self) -> bool:
        """Follow writes other processes published since this index was opened (a search sees the
        generation that was current when the index was opened or last refreshed). Cheap when
        nothing changed (one ``stat``); returns whether anything did."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        if self.manifest["engine"] == "qdrant":  # one live collection: only the description changes
            manifest = read_manifest(self.path)
            if manifest.get("qdrant") != self.manifest.get("qdrant"):
                self.backend.close()  # local mode: one client per folder; reopen on the new collection
                self.backend = open_backend(self.path, manifest, verify=False)
            self.backend.follow(manifest)
        else:  # searches under way keep the generation they started on (closed when they let go of it)
            manifest, self.backend = _open_current(self.path, verify=False, wait=WAIT)
        self.manifest, self._stamp = manifest, stamp
        if self.model is not None:
            self.attach(self.model)
        return True

    def close(self) -> None:
        self.backend.close()

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
        rows = [it.row() for it in report.items]
        files = [it.file for it in report.items]
        added: List[int] = []

        def change(writer: Any, manifest: Dict[str, Any]) -> Dict[str, Any]:
            start = int(manifest["next_id"])
            ids = np.arange(start, start + report.count, dtype=np.int64)
            writer.add(ids, report.vectors, rows, files)
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

    def _write(self, change: Any, wait: float) -> None:
        """Under the index's lock: follow what other writers published, apply ``change(writer,
        manifest)`` to a new generation (faiss) or the collection (qdrant), publish ``index.json``."""
        with exclusive(self.path, f"index {str(self.path)!r}", wait):
            clean_stale(self.path)  # what killed writers left beside the folder
            self._follow()
            try:
                with self.backend.writing() as writer:
                    fields = change(writer, self.manifest)
                    described = writer.finish(self.manifest.get("requested_kind", "auto"))
                    manifest = {**self.manifest, **described, **fields,
                                "updated": dt.datetime.now().isoformat(timespec="seconds")}
                    atomic_write(self.path / MANIFEST, json.dumps(manifest, indent=2))
            except BaseException:
                self.backend.close()  # the old generation is intact on disk: reopen it
                self.backend = open_backend(self.path, self.manifest, verify=False, wait=wait)
                raise
            if writer is not self.backend:  # faiss: a new generation replaces the old one
                self.backend.close()
            self.manifest, self.backend, self._stamp = manifest, writer, _stamp(self.path)
            writer.drop_other_generations()

    def _follow(self) -> None:
        """(Holding the lock) re-read ``index.json``; reopen on what another writer published,
        refusing to write into an index that was rebuilt with another model or modality."""
        manifest = read_manifest(self.path)
        if manifest == self.manifest:
            return
        same = ("modality", "dim", "engine")
        if any(manifest[key] != self.manifest[key] for key in same) or \
                manifest["model"].get("fingerprint") != self.manifest["model"].get("fingerprint"):
            raise BinderInputError(f"index {str(self.path)!r} was rebuilt by another process (another model, modality "
                                   "or engine) since it was opened here; nothing was written: open it again")
        log.info("index %s changed since it was opened: following the current generation", self.path)
        self.backend.close()
        self.manifest, self.backend = manifest, open_backend(self.path, manifest, verify=False)

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
        check_k(k)  # before the query is embedded
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
        backend = self.backend  # one generation for the whole search, whatever refresh() does meanwhile
        k = min(check_k(k), backend.count())  # never more hits than items: nothing larger is allocated
        if not k:
            return [Hits([]) for _ in range(len(q))]
        scores, ids = backend.search(q, k, where)  # (N, k) each; id -1: no hit
        if hasattr(backend, "hits"):  # a backend that makes result objects itself (faster)
            return backend.hits(scores, ids)
        return hits_from_rows(scores, ids, backend.hit_rows(ids[ids >= 0]))

    # ----- items ------------------------------------------------------------------------------

    def get(self, item_id: int) -> Item:
        """The indexed item ``item_id``: its path (or text), metadata and file record.

        Raises:
            BinderInputError: no such item.
        """
        item_id = check_ids([item_id])[0]
        rows = self.backend.rows([item_id])
        if item_id not in rows:
            raise BinderInputError(f"no item {item_id} in index {str(self.path)!r}")
        row = dict(rows[item_id])
        return Item(str(row.pop("path")), row, self.backend.file_record(item_id))

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
