"""An index folder's description (``index.json``) and the checks around it.

``index.json`` says what an index is: its format and version, the modality and embedding size,
the model that embedded it (fingerprints), its engine and that engine's files or collection, the
next id. :func:`read_manifest` reads it with every field checked; :func:`check_target` decides
what a build may write over; :func:`check_k` and :func:`check_ids` bound what a query or a
delete may ask for, before anything is allocated.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from binder.errors import BinderIndexError, BinderInputError

FORMAT, VERSION, MANIFEST = "binder-index", 1, "index.json"
MAX_K = 10_000  # the most hits one query may ask for (k is also capped at the index's size)
MAX_ID = 2 ** 63 - 1


def read_manifest(path: Path) -> Dict[str, Any]:
    """``index.json`` of an index folder, checked (every problem: one clear error)."""
    file = path / MANIFEST
    if not path.exists():
        raise BinderInputError(f"index {str(path)!r} does not exist (build it with binder.Index.build or "
                               "`binder index build`)")
    if not file.is_file():
        raise BinderIndexError(f"{str(path)!r} is not a binder index: {MANIFEST} is missing (a half-written or "
                               "foreign folder)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BinderIndexError(f"{str(file)!r} is damaged: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BinderIndexError(f"{str(file)!r} is not a binder index description (format must be {FORMAT!r})")
    if int(manifest.get("version", 0)) > VERSION:
        raise BinderIndexError(f"index {str(path)!r} was written by a newer binder (version {manifest['version']})")
    for key, kind in (("dim", int), ("modality", str), ("model", dict), ("engine", str), ("next_id", int)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise BinderIndexError(f"{str(file)!r} is damaged: {key!r} must be a {kind.__name__}")
    generation = manifest.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation <= MAX_ID:
        raise BinderIndexError(f"{str(file)!r} is damaged: 'generation' must be a whole number >= 0, got "
                               f"{generation!r}")
    if not 0 < manifest["dim"] <= 65_536 or not 0 <= manifest["next_id"] <= MAX_ID:
        raise BinderIndexError(f"{str(file)!r} is damaged: 'dim' or 'next_id' is out of range")
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


def stamp(path: Path) -> Optional[tuple]:
    """What identifies the current ``index.json`` (each publish writes a new file)."""
    try:
        st = os.stat(path / MANIFEST)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
