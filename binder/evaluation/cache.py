"""The embedding cache: a split is embedded once per (model, dataset, split, preprocessing).

An entry is a folder ``<cache>/eval/<dataset>/<split>-<modality>-<key>/`` holding
``embeddings.npy`` (N, D) float32 and ``entry.json`` (the full key, the record ids, the skipped
items with their reasons, the SHA-256 of the array). The key is the SHA-256 of: the model's
fingerprint for the modality (its weights), the preprocessing settings, the dataset, split and
protocol with its options, every record's id and source, and the size and modification time of
every file the records and the split's metadata are read from. So a re-run with other prompts or
probes reads the entry in milliseconds, while a changed model, setting or data file gives another
key. Entries are written through :func:`binder.files.atomic_folder` (an interrupted run leaves
none); one whose ``entry.json`` is unreadable, whose key differs, or whose array does not match
its recorded digest or shape is never used: it is logged and rebuilt.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from binder.download import cache_dir
from binder.files import atomic_folder, file_digest

log = logging.getLogger(__name__)

ARRAY, ENTRY = "embeddings.npy", "entry.json"
FORMAT = 1


@dataclass
class Entry:
    """A cache entry: vectors (N, D), the indices of the records they belong to, the skipped."""

    vectors: np.ndarray
    kept: List[int]
    skipped: List[Tuple[str, str]]
    path: Path
    hit: bool


def eval_cache_root(explicit: "str | os.PathLike | None" = None) -> Path:
    """``<binder cache>/eval`` (``$BINDER_CACHE``, default ``~/.cache/binder``), or ``explicit``."""
    return Path(explicit).expanduser() if explicit is not None else cache_dir() / "eval"


def files_state(paths: Sequence[str]) -> List[Tuple[str, int, int]]:
    """(path, size, mtime ns) of each distinct existing file (missing ones: -1, -1)."""
    out = []
    for p in sorted(set(paths)):
        try:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((p, -1, -1))
    return out


def entry_folder(root: Path, dataset: str, split: str, modality: str, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{split}-{modality}")
    return root / dataset / f"{safe}-{key[:24]}"


def read_entry(folder: Path, key: str) -> Optional[Entry]:
    """The entry in ``folder`` if it is complete and matches ``key``; None (logged) otherwise."""
    if not folder.is_dir():
        return None
    why = None
    try:
        meta = json.loads((folder / ENTRY).read_text())
        if meta.get("format") != FORMAT or meta.get("key") != key:
            why = "its key differs (stale)"
        elif file_digest(folder / ARRAY) != meta.get("sha256"):
            why = "its array does not match its recorded digest (partial or altered)"
        else:
            vectors = np.load(folder / ARRAY, allow_pickle=False)
            if vectors.shape != tuple(meta["shape"]) or vectors.shape[0] != len(meta["kept"]):
                why = f"its array has shape {vectors.shape}, its record says {meta['shape']}"
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = f"it is unreadable ({type(err).__name__}: {err})"
    if why:
        log.warning("embedding cache entry %s is not used: %s; recomputing", folder, why)
        return None
    return Entry(vectors, list(meta["kept"]), [tuple(s) for s in meta["skipped"]], folder, hit=True)


def write_entry(folder: Path, key: str, description: Dict[str, Any], vectors: np.ndarray, kept: List[int],
                skipped: List[Tuple[str, str]]) -> Entry:
    """Write an entry atomically (replacing any old one in ``folder``)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    with atomic_folder(folder) as tmp:
        np.save(tmp / ARRAY, vectors, allow_pickle=False)
        meta = {"format": FORMAT, "key": key, "shape": list(vectors.shape), "sha256": file_digest(tmp / ARRAY),
                "kept": [int(i) for i in kept], "skipped": [list(s) for s in skipped], "description": description}
        (tmp / ENTRY).write_text(json.dumps(meta, indent=1, default=str))
    return Entry(vectors, list(kept), list(skipped), folder, hit=False)
