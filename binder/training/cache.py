"""The anchor cache: the frozen anchor's embeddings of the paired images, computed once.

ImageBind's image tower is frozen (arXiv 2305.05665, sec. 3.2): what it gives for a paired image
never changes, so running it again at every step of every epoch (a ViT-H-14 forward is 335 GFLOP,
several times the audio step) is waste. ``binder cache`` embeds every paired image once, and ``K``
augmented views of it where the recipe augments images (:class:`CacheConfig`), into a folder that
training reads instead of running the anchor (``anchor.cache=<folder>``):

* ``keys.npy``: the sample ids, fixed-width bytes, sorted (looked up by binary search in place);
* ``vectors.npy``: ``(N, K, D)`` unit embeddings (float16 by default), row ``i`` for ``keys[i]``;
* ``cache.json``: the format, the fingerprint (the anchor's weights, its image transform and
  the view augmentation, the data), the shapes and SHA-256 checksums of ``vectors.npy`` in
  64 MiB chunks. It is written last, and the folder appears in one rename.

A cache whose fingerprint differs from the run's (another anchor, transform or data) is stale, a
folder without a complete ``cache.json`` or with files of the wrong size is partial, one whose
checksums or vector norms are off is corrupt: each is refused with one error saying which and how
to rebuild. The arrays are memory-mapped read-only and opened lazily in each process, so any
number of loader workers and training processes share one copy in the page cache. Building runs
in parts (:mod:`binder.parts`): a killed build resumes where it stopped, and ranks of a
``torchrun`` launch split the parts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from binder.config import SCHEMAS
from binder.embedding import embed_inputs
from binder.errors import BinderConfigError, BinderInputError
from binder.files import atomic_folder
from binder.logs import progress
from binder.parts import PartJob
from binder.types import IMAGE, IMAGE_EMBEDDING

log = logging.getLogger(__name__)

FORMAT = 1
CACHE_FILE, KEYS_FILE, VECTORS_FILE = "cache.json", "keys.npy", "vectors.npy"
CHUNK = 64 << 20  # bytes per checksum chunk
VERIFY = ("auto", "full", "quick")
FULL_VERIFY_BYTES = 1 << 30  # auto: checksum every chunk up to this size, a sample above it


@dataclass
class CacheConfig:
    """How ``binder cache`` builds an anchor cache (the schema of the ``cache`` node)."""

    views: int = 1  # embeddings per image: 1 (no image augmentation) or K augmented views
    augment: Optional[Any] = None  # with views > 1: a _target_ node, a PIL image -> PIL image augmentation
    dtype: str = "float16"  # float16 (half the disk and page cache) | float32
    batch_size: int = 256  # images per anchor forward pass
    num_workers: int = 2  # image decoding workers
    part_size: int = 65536  # embeddings per part (a killed build resumes from its finished parts)
    verify: str = "auto"  # checksums checked when a run opens it: auto (all up to 1 GiB, a sample above) | full | quick

    def __post_init__(self) -> None:
        if self.views < 1 or self.batch_size < 1 or self.num_workers < 0 or self.part_size < 1:
            raise BinderConfigError(f"cache.views, batch_size and part_size must be >= 1 and num_workers >= 0, got "
                                    f"{self.views}, {self.batch_size}, {self.part_size}, {self.num_workers}")
        if self.views > 1 and self.augment is None:
            raise BinderConfigError("cache.views > 1 needs cache.augment (a _target_ image augmentation): without "
                                    "one, every view would be the same embedding")
        if self.dtype not in ("float16", "float32") or self.verify not in VERIFY:
            raise BinderConfigError(f"cache.dtype must be float16 or float32 and cache.verify one of {VERIFY}, got "
                                    f"{self.dtype!r}, {self.verify!r}")


SCHEMAS.register("cache/default", CacheConfig)


@dataclass
class AnchorImages:
    """The paired images of a data module, as the cache sees them.

    Attributes:
        keys: One sample id per image (unique strings).
        load: Image ``i`` (of ``keys``) -> what the anchor's transform reads (a PIL image or a path).
        fingerprint: A digest of the data (contents, or paths with sizes and times).
    """

    keys: List[str]
    load: Callable[[int], Any]
    fingerprint: str


def digest(value: Any) -> str:
    """SHA-256 of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def cache_spec(anchor: Any, images: AnchorImages, cfg: CacheConfig) -> Dict[str, Any]:
    """The fingerprint of what a cache holds: anchor weights, image transform, views, data."""
    transform = {"image_config": dataclasses.asdict(anchor.image_config()),
                 "preprocess": re.sub(r" at 0x[0-9a-fA-F]+", "", repr(getattr(anchor, "preprocess", None))),
                 "views": cfg.views, "augment": cfg.augment if cfg.views > 1 else None}
    return {"anchor": anchor.fingerprint(), "transform": digest(transform), "data": images.fingerprint,
            "views": cfg.views}


class _Views:
    """(image index, view) -> the image, augmented with a seed of its own for views > 0 (picklable)."""

    def __init__(self, load: Callable[[int], Any], augment: Optional[Callable], keys: Sequence[str]) -> None:
        self.load, self.augment, self.keys = load, augment, keys

    def __call__(self, item: Tuple[int, int]) -> Any:
        i, view = item
        image = self.load(i)
        if self.augment is None:
            return image
        from binder.anchor import open_image

        seed = int(hashlib.sha256(f"{self.keys[i]}/{view}".encode()).hexdigest()[:8], 16)
        state = random.getstate(), torch.random.get_rng_state()
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.augment(open_image(image))
        finally:
            random.setstate(state[0])
            torch.random.set_rng_state(state[1])


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------

def build_cache(path: "str | Path", model: Any, images: AnchorImages, cfg: CacheConfig, spec: Dict[str, Any],
                augment: Optional[Callable] = None, rank: int = 0, world: int = 1) -> Optional[Path]:
    """Embed every image (``cfg.views`` views each) with ``model``'s anchor into a cache at ``path``.

    Parts go to ``.<name>.parts`` beside it (a re-run resumes them; ranks split them); rank 0
    waits for every part, merges them into the cache folder in one rename and removes the parts.
    Images that cannot be read are skipped and reported (their samples are absent from the cache).

    Returns:
        The cache folder on rank 0, None on the other ranks.
    """
    path = Path(path).expanduser().absolute()
    keys = list(images.keys)
    if len(set(keys)) != len(keys):
        raise BinderInputError("the data's sample ids are not unique: the anchor cache needs one id per image")
    items = [(i, v) for i in range(len(keys)) for v in range(cfg.views)]
    job = PartJob(path.with_name(f".{path.name}.parts"), len(items), cfg.part_size,
                  {"cache": spec, "keys": digest(keys), "dtype": cfg.dtype}).start()
    load = _Views(images.load, augment, keys)
    todo = job.todo(rank, world)
    log.info("anchor cache: embedding %d images x %d view(s) in %d part(s) (%d left for this process)", len(keys),
             cfg.views, job.parts, len(todo))
    for p in progress(todo, "anchor cache", unit="part"):
        a, b = job.bounds(p)
        done = embed_inputs(model, IMAGE, items[a:b], batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                            on_error="skip", load=load, progress=len(todo) == 1)
        buffer = io.BytesIO()
        np.savez(buffer, positions=np.asarray(done.kept, dtype=np.int64) + a,
                 vectors=done.vectors.astype(cfg.dtype), skipped=np.asarray(
                     [json.dumps([keys[items[a + i][0]], reason]) for i, reason in done.skipped], dtype=str))
        job.write(p, buffer.getvalue())
    if rank != 0:
        return None
    job.wait()
    return _merge(path, job, keys, cfg, spec)


def _merge(path: Path, job: PartJob, keys: List[str], cfg: CacheConfig, spec: Dict[str, Any]) -> Path:
    """Parts -> the cache folder (sorted keys, vectors in their order, cache.json last)."""
    views = cfg.views
    ok = np.zeros(len(keys) * views, dtype=bool)
    skipped: Dict[str, str] = {}
    dim = 0
    for p in range(job.parts):
        with np.load(job.path(p)) as part:
            ok[part["positions"]] = True
            dim = dim or (part["vectors"].shape[1] if part["vectors"].ndim == 2 else 0)
            skipped.update(json.loads(s) for s in part["skipped"].tolist())
    whole = ok.reshape(len(keys), views).all(1)  # a key is cached only with all its views
    encoded = np.asarray([k.encode() for k in keys], dtype=object)
    order = [i for i in sorted(range(len(keys)), key=lambda i: encoded[i]) if whole[i]]
    if not order:
        raise BinderInputError(f"no image could be embedded for the anchor cache ({len(skipped)} unreadable, e.g. "
                               f"{next(iter(skipped.items()), None)})")
    row_of = np.full(len(keys), -1, dtype=np.int64)
    row_of[order] = np.arange(len(order))
    with atomic_folder(path) as tmp:
        width = max(len(encoded[i]) for i in order)
        np.save(tmp / KEYS_FILE, np.asarray([encoded[i] for i in order], dtype=f"S{width}"))
        out = np.lib.format.open_memmap(tmp / VECTORS_FILE, mode="w+", dtype=cfg.dtype, shape=(len(order), views, dim))
        for p in range(job.parts):
            with np.load(job.path(p)) as part:
                pos, vec = part["positions"], part["vectors"]
                rows = row_of[pos // views]
                keep = rows >= 0
                out[rows[keep], (pos % views)[keep]] = vec[keep]
        out.flush()
        del out
        meta = {"format": FORMAT, "state": "complete", "fingerprint": spec, "count": len(order), "views": views,
                "dim": int(dim), "dtype": cfg.dtype, "chunk": CHUNK, "checksums": _checksums(tmp / VECTORS_FILE),
                "skipped": len(skipped), "skipped_examples": dict(list(skipped.items())[:20])}
        (tmp / CACHE_FILE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(job.folder, ignore_errors=True)
    if skipped:
        log.warning("anchor cache: %d image(s) could not be read and are not cached, e.g. %s", len(skipped),
                    next(iter(skipped.items())))
    log.info("anchor cache: %d images x %d view(s) x %d dims (%s) in %s", len(order), views, dim, cfg.dtype, path)
    return path


def _checksums(path: Path, chunks: Optional[Sequence[int]] = None) -> List[str]:
    """SHA-256 of each ``CHUNK`` of a file (only the chunks listed, when given)."""
    out = []
    with open(path, "rb") as fh:
        for i in chunks if chunks is not None else range(-(-path.stat().st_size // CHUNK) or 1):
            fh.seek(i * CHUNK)
            out.append(hashlib.sha256(fh.read(CHUNK)).hexdigest())
    return out


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

REBUILD = "rebuild it with `binder cache` (the same overrides as the run, anchor.cache=<folder>)"


class AnchorCache:
    """A checked, memory-mapped anchor cache.

    Args:
        path: The cache folder.
        expect: The run's fingerprint (:func:`cache_spec`); a cache with another is refused as stale.
        verify: auto | full | quick (which checksums to check).

    Raises:
        BinderInputError: the cache is missing, partial, corrupt or stale (saying which).
    """

    def __init__(self, path: "str | Path", expect: Optional[Dict[str, Any]] = None, verify: str = "auto") -> None:
        self.path = Path(path).expanduser().absolute()
        self.meta = _read_meta(self.path)
        self._check_files()
        if expect is not None:
            _check_fresh(self.path, self.meta["fingerprint"], expect)
        self._verify(verify)
        self._keys: Optional[np.ndarray] = None
        self._vectors: Optional[np.ndarray] = None

    def _check_files(self) -> None:
        m = self.meta
        itemsize = np.dtype(m["dtype"]).itemsize
        try:
            vectors = np.load(self.path / VECTORS_FILE, mmap_mode="r")
            keys = np.load(self.path / KEYS_FILE, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise BinderInputError(f"anchor cache {str(self.path)!r} is partial or corrupt ({err}): "
                                   f"{REBUILD}") from None
        want = (m["count"], m["views"], m["dim"])
        if vectors.shape != want or keys.shape != (m["count"],) or vectors.dtype.itemsize != itemsize:
            raise BinderInputError(f"anchor cache {str(self.path)!r} is partial or corrupt: vectors {vectors.shape}, "
                                   f"keys {keys.shape}, expected {want}: {REBUILD}")

    def _verify(self, mode: str) -> None:
        if mode not in VERIFY:
            raise BinderConfigError(f"cache verify must be one of {VERIFY}, got {mode!r}")
        stored = self.meta["checksums"]
        size = (self.path / VECTORS_FILE).stat().st_size
        if mode == "full" or (mode == "auto" and size <= FULL_VERIFY_BYTES):
            chunks = list(range(len(stored)))
        else:
            sample = random.Random(0).sample(range(len(stored)), min(len(stored), 8 if mode == "auto" else 0))
            chunks = sorted({0, len(stored) - 1, *sample})
        have = _checksums(self.path / VECTORS_FILE, chunks) if -(-size // CHUNK) == len(stored) else None
        if have != [stored[i] for i in chunks]:
            raise BinderInputError(f"anchor cache {str(self.path)!r} is corrupt: its vectors do not match the "
                                   f"checksums in {CACHE_FILE}: {REBUILD}")

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_keys": None, "_vectors": None}  # each process maps the files itself

    def _open(self) -> None:
        if self._vectors is None:
            self._keys = np.load(self.path / KEYS_FILE, mmap_mode="r")
            self._vectors = np.load(self.path / VECTORS_FILE, mmap_mode="r")

    def __len__(self) -> int:
        return int(self.meta["count"])

    @property
    def views(self) -> int:
        return int(self.meta["views"])

    def row(self, key: str) -> int:
        """Row of ``key``, or -1 when it is not cached."""
        self._open()
        b = str(key).encode()
        i = int(np.searchsorted(self._keys, b))
        return i if i < len(self._keys) and self._keys[i] == b else -1

    def __contains__(self, key: str) -> bool:
        return self.row(key) >= 0

    def get(self, key: str, view: Optional[int] = None) -> torch.Tensor:
        """The embedding (D,) float32 of ``key``: view ``view``, or a random one of its views.

        Raises:
            BinderInputError: ``key`` is not cached, or its row is corrupt (not unit-norm).
        """
        i = self.row(key)
        if i < 0:
            raise BinderInputError(f"sample {key!r} is not in the anchor cache {str(self.path)!r} (its image was "
                                   "unreadable when the cache was built)")
        v = random.randrange(self.views) if view is None else view
        z = torch.from_numpy(np.array(self._vectors[i, v], dtype=np.float32))
        norm = float(z.norm())
        if not abs(norm - 1.0) < 1e-2:
            raise BinderInputError(f"anchor cache {str(self.path)!r} is corrupt: the embedding of {key!r} has norm "
                                   f"{norm:.4g}, not 1: {REBUILD}")
        return z


def _read_meta(path: Path) -> Dict[str, Any]:
    if not path.is_dir():
        raise BinderInputError(f"anchor cache {str(path)!r} does not exist: build it with `binder cache` "
                               "(the same overrides as the run, anchor.cache=<folder>), or set anchor.cache=auto")
    try:
        meta = json.loads((path / CACHE_FILE).read_text())
    except FileNotFoundError:
        raise BinderInputError(f"anchor cache {str(path)!r} is partial: it has no {CACHE_FILE} (a build that did "
                               f"not finish, or not a cache folder): {REBUILD}") from None
    except (OSError, ValueError) as err:
        raise BinderInputError(f"anchor cache {str(path)!r} is corrupt: {CACHE_FILE} does not read ({err}): "
                               f"{REBUILD}") from None
    needed = ("format", "state", "fingerprint", "count", "views", "dim", "dtype", "checksums")
    if not isinstance(meta, dict) or any(k not in meta for k in needed):
        raise BinderInputError(f"anchor cache {str(path)!r} is corrupt: {CACHE_FILE} lacks "
                               f"{[k for k in needed if k not in (meta if isinstance(meta, dict) else {})]}: {REBUILD}")
    if meta["format"] != FORMAT or meta["state"] != "complete":
        raise BinderInputError(f"anchor cache {str(path)!r} is partial or of another format (format "
                               f"{meta['format']}, state {meta['state']!r}; this binder reads format {FORMAT}): "
                               f"{REBUILD}")
    return meta


WHAT = {"anchor": "anchor weights", "transform": "image transform or view augmentation", "data": "data",
        "views": "number of views"}


def _check_fresh(path: Path, have: Dict[str, Any], want: Dict[str, Any]) -> None:
    differ = [WHAT.get(k, k) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
    if differ:
        raise BinderInputError(f"anchor cache {str(path)!r} is stale: it was built for other {', '.join(differ)} "
                               f"than this run's: {REBUILD}")


# ----------------------------------------------------------------------------------------------
# What datasets pair X with
# ----------------------------------------------------------------------------------------------

class CachedImages:
    """Stands where a split's preprocessed images stood: ``rows[j]`` is the cached embedding of
    image ``keys[j]`` (a random view), under the batch key :data:`IMAGE_EMBEDDING`."""

    def __init__(self, cache: AnchorCache, keys: Sequence[str]) -> None:
        self.cache, self.keys = cache, list(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> torch.Tensor:
        return self.cache.get(self.keys[int(j)])


def image_target(cache: Optional[AnchorCache], anchor: Any, key: str, image: Any) -> Tuple[str, torch.Tensor]:
    """(batch key, tensor) of a pair's image side: its cached embedding, or the anchor's
    preprocessed image when the run has no cache."""
    if cache is not None:
        return IMAGE_EMBEDDING, cache.get(key)
    return IMAGE, anchor.preprocess_image(image)


def target_key(images: Any) -> str:
    """The batch key of what a split's ``images`` hold (:data:`IMAGE_EMBEDDING` when cached)."""
    return IMAGE_EMBEDDING if isinstance(images, CachedImages) else IMAGE


# ----------------------------------------------------------------------------------------------
# A run's cache: anchor.cache=<folder> | auto | null
# ----------------------------------------------------------------------------------------------

def default_path(cache_root: "str | Path", spec: Dict[str, Any]) -> Path:
    """Where ``anchor.cache=auto`` keeps the cache of ``spec``: ``<paths.cache>/anchor-targets/<digest>``."""
    return Path(str(cache_root)).expanduser() / "anchor-targets" / digest(spec)[:20]


def cache_settings(cfg: Any) -> CacheConfig:
    """The run's ``cache`` node as a :class:`CacheConfig`."""
    from binder.config import build_dataclass

    return build_dataclass(CacheConfig, cfg.get("cache") or {}, "cache")


def make_cache(cfg: Any, model: Any, images: AnchorImages, spec: Dict[str, Any], settings: CacheConfig,
               force: bool = False) -> Optional[Path]:
    """Build the cache ``cfg.anchor.cache`` names (``auto``: under ``paths.cache``) unless a
    complete one is there; returns its folder (None where ``auto`` judges it not worth building:
    a run of one epoch). Ranks of a multi-process launch split the work; the others wait for rank 0."""
    from binder.config import instantiate
    from binder.parts import rank_and_world

    setting = str(cfg.anchor.get("cache") or "auto")
    path = default_path(cfg.paths.cache, spec) if setting == "auto" else Path(setting).expanduser().absolute()
    if (path / CACHE_FILE).is_file():
        return path
    trainer = cfg.get("trainer") or {}
    epochs = int(trainer.get("max_epochs") or 0)
    if setting == "auto" and not force and (0 < epochs < 2 or trainer.get("fast_dev_run")):
        log.info("anchor cache: not built for a run of one epoch (it pays from the second)")
        return None
    if setting != "auto" and not force:
        return path  # AnchorCache says that it does not exist and how to build it
    augment = instantiate(settings.augment, "cache.augment") if settings.views > 1 else None
    rank, world = rank_and_world()
    if torch.cuda.is_available():
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    try:
        build_cache(path, model, images, settings, spec, augment, rank, world)
    finally:
        model.to("cpu")
    if rank != 0:
        _wait_for(path)
    return path


def _wait_for(path: Path, timeout: float = 24 * 3600.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not (path / CACHE_FILE).is_file():
        if time.monotonic() > deadline:
            raise BinderInputError(f"anchor cache {str(path)!r} was not finished by rank 0 within {timeout:g} s")
        time.sleep(1.0)


def open_cache(cfg: Any, model: Any, datamodule: Any) -> Optional[AnchorCache]:
    """The checked cache a run trains from (None: ``anchor.cache=null``, a target other than
    image, or ``auto`` not worth it). ``auto`` builds it first when missing.

    Raises:
        BinderInputError: a named cache that is missing, partial, corrupt or stale.
    """
    setting = cfg.anchor.get("cache")
    if not setting:
        return None
    if cfg.target != IMAGE:
        log.info("anchor.cache holds image embeddings: not used with target=%s", cfg.target)
        return None
    settings = cache_settings(cfg)
    try:
        images = datamodule.anchor_images()
    except BinderConfigError:
        if str(setting) != "auto":
            raise
        return None  # auto: data without its own images to cache (shards carry theirs)
    spec = cache_spec(model.anchor, images, settings)
    path = make_cache(cfg, model, images, spec, settings)
    if path is None:
        return None
    cache = AnchorCache(path, expect=spec, verify=settings.verify)
    log.info("anchor cache: %s (%d images x %d view(s)): the anchor does not run in training steps", path,
             len(cache), cache.views)
    return cache
