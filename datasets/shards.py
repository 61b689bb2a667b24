"""Streaming shards of pairs, for data that does not fit a folder (litdata's format).

``binder shards pack pairs.csv -o shards/ --modality audio [--cache vith.cache]`` reads a
manifest of pairs (:mod:`binder.datasets.manifest`) and writes litdata chunks (``chunk-*.bin`` +
``index.json``, 64 MB each) holding, per pair, the raw file of the bound modality (its bytes and
suffix, decoded at read time by the modality's own preprocessor), the anchor's cached embedding
of its image when an anchor cache is given (:mod:`binder.training.cache`: then the anchor never
runs in training), otherwise the image file, the sample id and the label; ``binder.json`` beside
them records what was packed. ``binder train data=shards data.path=shards/`` (a folder, or an
``s3://bucket/prefix`` of an S3-compatible store, ``data.endpoint_url`` for one that is not AWS)
streams them: chunks downloaded ahead into a bounded local cache, shuffled across chunks and
within them with a new order every epoch, split across ranks and loader workers, and resumable
in the middle of an epoch: the loader's position is part of every checkpoint, so a killed run
resumed with ``resume=true`` reads exactly the samples it had not reached. A chunk or sample that
cannot be read is reported and skipped; the count goes to the logs and ``status.json``.
Why litdata and not WebDataset or MosaicML streaming: measured in ``benchmarks/shard_formats.py``
(docs/scale.md).
"""
from __future__ import annotations

import json
import logging
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import default_collate

from binder.config import SCHEMAS, build_dataclass
from binder.datasets.manifest import read_manifest
from binder.errors import BinderConfigError, BinderInputError, MissingDependencyError
from binder.training.cache import IMAGE_EMBEDDING, AnchorCache
from binder.training.data import SKIPPED, PairedDataModule, combine, pad_raw
from binder.types import IMAGE

log = logging.getLogger(__name__)

META_FILE = "binder.json"
FORMAT = 1


def _litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise MissingDependencyError("litdata", "streaming shards", "shards") from None
    return litdata


@dataclass
class ShardsConfig:
    """Pairs streamed from shards (the schema of ``data=shards``)."""

    _target_: str = "binder.datasets.shards.ShardsDataModule"
    path: str = "???"  # the training shards: a folder or s3://bucket/prefix written by binder shards pack
    val_path: Optional[str] = None  # held-out shards (validation loss)
    cache_dir: Optional[str] = None  # where chunks of remote shards are kept (default: litdata's)
    max_cache_size: str = "50GB"  # bound of that local cache
    endpoint_url: Optional[str] = None  # an S3-compatible store's endpoint (MinIO, Ceph, ...); else AWS_ENDPOINT_URL
    batch_size: int = 64  # pairs per batch and process
    num_workers: int = 2  # loader workers per process (each reads its own chunks)
    shuffle: bool = True  # new order every epoch, across chunks and within them
    seed: int = 0  # the shuffle seed
    augment: bool = True  # the modality's train-time augmentation

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise BinderConfigError(f"data.batch_size must be >= 1 and num_workers >= 0, got {self.batch_size}, "
                                    f"{self.num_workers}")


SCHEMAS.register("data/shards", ShardsConfig)


# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------

class _Packer:
    """Manifest row -> the sample stored in a shard (picklable: litdata's workers call it)."""

    def __init__(self, modality: str, cache: Optional[str], has_label: bool) -> None:
        self.modality, self.cache_path, self.has_label = modality, cache, has_label
        self._cache: Optional[AnchorCache] = None

    def __call__(self, row: Dict[str, Any]) -> Dict[str, Any]:
        path = Path(row[self.modality])
        sample = {"id": str(row["id"]), "label": str(row.get("label") or "") if self.has_label else "",
                  self.modality: path.read_bytes(), f"{self.modality}_suffix": path.suffix.lower()}
        if self.cache_path is not None:
            if self._cache is None:
                self._cache = AnchorCache(self.cache_path, verify="quick")
            cache = self._cache
            sample[IMAGE_EMBEDDING] = np.stack([cache.get(row[IMAGE], v).numpy() for v in range(cache.views)]
                                               ).astype(np.float16)  # (K, D)
        else:
            image = Path(row[IMAGE])
            sample[IMAGE], sample[f"{IMAGE}_suffix"] = image.read_bytes(), image.suffix.lower()
        return sample


def _packable(rows: List[Dict[str, Any]], modality: str, cache: Optional[AnchorCache]) -> tuple:
    """Rows whose files exist (and whose image is cached, with a cache), and why the others are not."""
    good, why = [], Counter()
    for row in rows:
        if not row.get(modality) or not Path(row[modality]).is_file():
            why[f"missing {modality} file"] += 1
        elif cache is not None and (not row.get(IMAGE) or row[IMAGE] not in cache):
            why["image not in the anchor cache"] += 1
        elif cache is None and (not row.get(IMAGE) or not Path(row[IMAGE]).is_file()):
            why["missing image file"] += 1
        else:
            good.append(row)
    return good, why


def pack(manifest: "str | Path", output: "str | Path", modality: str, cache: "str | Path | None" = None,
         chunk_mb: int = 64, workers: int = 1) -> Dict[str, Any]:
    """Pack the (image, ``modality``) pairs of ``manifest`` into shards at ``output``.

    Returns:
        What ``binder.json`` records: counts, the modality, the cache's fingerprint.

    Raises:
        BinderInputError: an unreadable manifest, an output that exists, or no packable row.
    """
    litdata = _litdata()
    output = Path(output).expanduser().absolute()
    if output.exists() and any(output.iterdir()):
        raise BinderInputError(f"shards output {str(output)!r} exists and is not empty: choose a new folder")
    rows = read_manifest(manifest, modality, need_image=True)
    opened = AnchorCache(cache, verify="full") if cache else None
    good, why = _packable(rows, modality, opened)
    if why:
        log.warning("shards: %d of %d rows not packed (%s)", len(rows) - len(good), len(rows),
                    ", ".join(f"{n} {r}" for r, n in why.items()))
    if not good:
        raise BinderInputError(f"manifest {str(manifest)!r} has no packable {modality} row ({dict(why)})")
    has_label = any(r.get("label") not in (None, "") for r in good)
    packer = _Packer(modality, str(opened.path) if opened else None, has_label)
    litdata.optimize(fn=packer, inputs=good, output_dir=str(output), chunk_bytes=f"{chunk_mb}MB",
                     num_workers=max(1, workers), verbose=False, start_method="fork", reorder_files=False)
    meta = {"format": FORMAT, "modality": modality, "count": len(good), "skipped": dict(why),
            "labels": sorted({r["label"] for r in good if r.get("label") not in (None, "")}) if has_label else [],
            "anchor_cache": opened.meta["fingerprint"] if opened else None, "views": opened.views if opened else 0,
            "manifest": str(Path(manifest).expanduser().absolute())}
    (output / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def read_meta(path: str, storage_options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``binder.json`` of shards at a folder or ``s3://`` URL.

    Raises:
        BinderInputError: no such shards, or not binder's.
    """
    if str(path).startswith("s3://"):
        text = _s3_read(str(path).rstrip("/") + "/" + META_FILE, storage_options or {})
    else:
        folder = Path(path).expanduser()
        if not (folder / "index.json").is_file():
            raise BinderInputError(f"shards {str(path)!r} do not exist (no index.json): pack them with "
                                   "`binder shards pack MANIFEST -o FOLDER --modality M`")
        text = (folder / META_FILE).read_text() if (folder / META_FILE).is_file() else None
    if text is None:
        raise BinderInputError(f"shards {str(path)!r} have no {META_FILE}: pack them with `binder shards pack`")
    meta = json.loads(text)
    if meta.get("format") != FORMAT:
        raise BinderInputError(f"shards {str(path)!r} are of format {meta.get('format')}, this binder reads {FORMAT}")
    return meta


def _s3_read(url: str, options: Dict[str, Any]) -> Optional[str]:
    import boto3

    bucket, _, key = url[len("s3://"):].partition("/")
    client = boto3.client("s3", endpoint_url=options.get("endpoint_url"))
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except client.exceptions.NoSuchKey:
        return None
    except Exception as err:  # botocore's errors: no bucket, no access, no endpoint
        raise BinderInputError(f"cannot read {url}: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def _materialise(data: bytes, suffix: str) -> str:
    """The bytes of a packed file as a temporary file (in memory where /dev/shm exists) that the
    modality's preprocessor reads like the original; the caller removes it."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, name = tempfile.mkstemp(suffix=suffix, dir=folder, prefix="binder-shard-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return name


def _pair_shards() -> type:
    """:class:`PairShards`, made on first use (litdata is imported only by runs that stream shards)."""
    cls = globals().get("_PAIR_SHARDS")
    if cls is not None:
        return cls
    litdata = _litdata()

    class PairShards(litdata.StreamingDataset):
        """(X, image embedding or image) pairs decoded from shards; an unreadable one is None."""

        def __init__(self, decode: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]], **kw: Any) -> None:
            super().__init__(**kw)
            self.decode = decode

        def __getitem__(self, index: Any) -> Optional[Dict[str, Any]]:
            try:
                sample = super().__getitem__(index)
            except Exception as err:  # a damaged chunk: each of its samples is skipped and counted
                log.warning("skipping an unreadable shard sample (chunk %s): %s: %s",
                            getattr(index, "chunk_index", index), type(err).__name__, str(err)[:200])
                return None
            return self.decode(sample)

    PairShards.__module__, PairShards.__qualname__ = __name__, "PairShards"  # pickled by name
    globals()["_PAIR_SHARDS"] = cls = PairShards
    return cls


def __getattr__(name: str) -> Any:
    if name == "PairShards":
        return _pair_shards()
    raise AttributeError(name)


def shard_dataset(path: str, decode: Callable, options: Dict[str, Any], **kwargs: Any) -> Any:
    """A ``PairShards`` (a litdata ``StreamingDataset``) over the shards at ``path``."""
    return _pair_shards()(decode, input_dir=path, **options, **kwargs)


class Decoder:
    """A stored sample -> the pair a training step takes (``None`` when it cannot be read)."""

    def __init__(self, modality: str, preprocessor: Any, anchor: Any, train: bool, augment: Optional[Callable],
                 raw: bool, label_index: Dict[str, int]) -> None:
        self.modality, self.preprocessor, self.anchor, self.train = modality, preprocessor, anchor, train
        self.augment, self.raw, self.label_index = augment, raw, label_index

    def __call__(self, sample: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        m = self.modality
        try:
            name = _materialise(sample[m], sample[f"{m}_suffix"])
            try:
                x = self.preprocessor.raw(name, train=self.train) if self.raw else \
                    self.preprocessor(name, train=self.train)
            finally:
                os.unlink(name)
            if self.augment is not None and not self.raw:
                x = self.augment(x[0].clone())[None]
            item: Dict[str, Any] = {m: x, "id": sample["id"]}
            if sample.get("label"):
                item["label"] = self.label_index.get(sample["label"], -1)
            if IMAGE_EMBEDDING in sample:
                views = sample[IMAGE_EMBEDDING]  # (K, D)
                item[IMAGE_EMBEDDING] = torch.from_numpy(np.asarray(views[random.randrange(len(views))],
                                                                    dtype=np.float32))
            else:
                name = _materialise(sample[IMAGE], sample[f"{IMAGE}_suffix"])
                try:
                    item[IMAGE] = self.anchor.preprocess_image(name)
                finally:
                    os.unlink(name)
            return item
        except BinderInputError as err:
            log.warning("skipping shard sample %s: %s", sample.get("id"), err)
            return None


def collate_shards(items: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """The readable items of a batch, collated, with the number left out under :data:`SKIPPED`."""
    good = [x for x in items if x is not None]
    batch = default_collate(pad_raw(good)) if good else {}
    batch[SKIPPED] = torch.tensor(len(items) - len(good))
    return batch


# ----------------------------------------------------------------------------------------------
# The data module
# ----------------------------------------------------------------------------------------------

class ShardsDataModule(PairedDataModule):
    """(X, image) pairs of one bound modality streamed from shards (see :class:`ShardsConfig`)."""

    Config = ShardsConfig
    targets = (IMAGE,)
    reads_per_step = True  # decodes every pair on every read: device features pay

    def __init__(self, model: Any, modalities: Sequence[str], target: str = "image", **options: Any) -> None:
        super().__init__(model, modalities, target, **options)
        self.meta: Dict[str, Any] = {}
        self.loaders: Dict[str, Any] = {}
        self._resume: Optional[Dict[str, Any]] = None

    @classmethod
    def check(cls, options: Dict[str, Any], modalities: Sequence[str], target: str) -> str:
        cfg = build_dataclass(ShardsConfig, options, "data")
        if len(modalities) != 1 or target != IMAGE:
            raise BinderConfigError(f"data=shards streams one modality's (image, X) pairs: use one modality and "
                                    f"target=image, not modality={list(modalities)} target={target}")
        _litdata()
        for path in (cfg.path, cfg.val_path):
            if path:
                meta = read_meta(path, _storage(cfg))
                if meta["modality"] != modalities[0]:
                    raise BinderConfigError(f"shards {path!r} hold {meta['modality']} pairs, not {modalities[0]}")
        return f"shards at {cfg.path}"

    @property
    def storage_options(self) -> Dict[str, Any]:
        return _storage(self.cfg)

    def _dataset(self, path: str, train: bool) -> Any:
        m = self.modalities[0]
        labels = {name: i for i, name in enumerate(self.meta.get("labels", []))}
        decode = Decoder(m, self.preprocessors[m], self.anchor, train, self.augments[m] if train else None,
                         m in self.device_features, labels)
        options = {"storage_options": self.storage_options} if self.storage_options else {}
        if self.cfg.cache_dir:
            options["cache_dir"] = str(Path(self.cfg.cache_dir).expanduser())
        return shard_dataset(path, decode, options, shuffle=self.cfg.shuffle and train, drop_last=train,
                             seed=self.cfg.seed, max_cache_size=self.cfg.max_cache_size)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_sets:
            return
        m = self.modalities[0]
        self.meta = read_meta(self.cfg.path, self.storage_options)
        if self.meta.get("anchor_cache") and self.meta["anchor_cache"]["anchor"] != self.anchor.fingerprint():
            raise BinderInputError(f"shards {self.cfg.path!r} carry anchor embeddings of another anchor than this "
                                   "run's: pack them again with this run's anchor cache")
        self.train_sets[m] = self._dataset(self.cfg.path, True)
        if self.cfg.val_path:
            self.val_sets[m] = self._dataset(self.cfg.val_path, False)
        log.info("shards %s: %d train / %d val pairs (%s)", m, len(self.train_sets[m]), len(self.val_sets.get(m, ())),
                 "cached anchor embeddings" if self.meta.get("anchor_cache") else "images")

    def _loader(self, dataset: Any) -> Any:
        litdata = _litdata()
        return litdata.StreamingDataLoader(dataset, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers,
                                           collate_fn=collate_shards, pin_memory=self.pin_memory)

    def train_dataloader(self) -> CombinedLoader:
        m = self.modalities[0]
        self.loaders[m] = self._loader(self.train_sets[m])
        if self._resume is not None:  # a resumed run reads on from the checkpoint's position
            self.loaders[m].load_state_dict(self._resume)
            self._resume = None
        return combine({m: self.loaders[m]})

    def state_dict(self) -> Dict[str, Any]:
        """The training loader's position (epoch, samples read), saved in every checkpoint. Lightning
        restores a data module's state before anything sets up the training data, so the loader is
        made at that position from its first iteration."""
        loader = self.loaders.get(self.modalities[0])
        return {"loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._resume = state.get("loader")

    def end_epoch(self) -> None:
        """A training epoch ended (``BindingModule`` calls it): the loader of a resumed epoch, which
        Lightning stops at its known length rather than running dry, starts the next epoch afresh
        instead of replaying the restored position."""
        loader = self.loaders.get(self.modalities[0])
        if loader is not None and getattr(loader, "restore", False):
            loader.restore = False

    def val_dataloader(self) -> List[Any]:
        return [self._loader(self.val_sets[m]) for m in self.val_modalities]

    def anchor_images(self) -> Any:
        raise BinderConfigError("data=shards reads the anchor's embeddings from the shards themselves: pack them "
                                "with `binder shards pack ... --cache <anchor cache>` and set anchor.cache=null")

    def fingerprint(self) -> Dict[str, Any]:
        return {**super().fingerprint(), "shards": {k: self.meta.get(k) for k in ("count", "anchor_cache")}}


def _storage(cfg: ShardsConfig) -> Dict[str, Any]:
    endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and endpoint.startswith("http://"):
        _allow_plain_http()
    return {"endpoint_url": cfg.endpoint_url} if cfg.endpoint_url else {}


def _allow_plain_http() -> None:
    """litdata's fast S3 path (obstore) refuses an ``http://`` endpoint unless told otherwise; an
    in-cluster MinIO or Ceph gateway often is one."""
    try:
        from litdata.streaming import downloader

        options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
        if isinstance(options, dict):
            options["allow_http"] = "true"
    except ImportError:
        pass
