"""Users' own paired data from a manifest file: one row per (image, X) pair.

CSV (with a header) or JSON lines, columns ``image`` and one column per bound modality, named
after it (``audio``, ``depth``, or a plugin's ``tactile``), optional ``id`` and ``label``. A run
that binds several modalities uses, for each, the rows that fill its column. Relative paths are
resolved against the manifest's folder. Rows whose files are missing or unreadable are counted,
reported and skipped, never fatal; a manifest with no usable row is an error.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, default_collate

from binder.config import SCHEMAS, build_dataclass
from binder.manifests import read_rows, require, resolve
from binder.training.cache import AnchorImages, digest, image_target
from binder.training.data import PairedDataModule, combine, pad_raw
from binder.errors import BinderConfigError, BinderInputError
from binder.logs import progress
from binder.types import IMAGE, TEXT

log = logging.getLogger(__name__)


@dataclass
class ManifestConfig:
    """Your own pairs from a manifest file (the schema of ``data=manifest``)."""

    _target_: str = "binder.datasets.manifest.ManifestDataModule"
    path: str = "???"  # CSV (with a header) or .jsonl manifest: required
    val_path: Optional[str] = None  # held-out manifest; else val_fraction of the rows
    val_fraction: float = 0.1  # rows held out when val_path is not given
    classnames: Optional[List[str]] = None  # names for integer labels (zero-shot evaluation)
    templates: List[str] = field(default_factory=lambda: [
        "a photo of a {}.", "a {}.", "the sound of a {}.", "a picture of a {}."])  # class prompts
    validate: bool = True  # open every row's files up front
    batch_size: int = 64  # pairs per batch
    num_workers: int = 2  # DataLoader workers
    seed: int = 0  # seed of the train/val split
    augment: bool = True  # each modality's train-time augmentation

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0 or self.batch_size < 1 or self.num_workers < 0:
            raise BinderConfigError(f"data.val_fraction must be in [0, 1), batch_size >= 1 and num_workers >= 0, got "
                                    f"{self.val_fraction}, {self.batch_size}, {self.num_workers}")


SCHEMAS.register("data/manifest", ManifestConfig)


def read_manifest(path: "str | Path", modalities: "str | Sequence[str]",
                  need_image: bool = True) -> List[Dict[str, Any]]:
    """Rows of a CSV or JSON-lines manifest (:mod:`binder.manifests`) with absolute paths; checks
    the required columns (``image`` when ``need_image``, and every modality's)."""
    modalities = [modalities] if isinstance(modalities, str) else list(modalities)
    path = Path(path).expanduser()
    if not path.exists():
        raise BinderInputError(f"manifest {str(path)!r} does not exist: set data.path to your CSV or .jsonl file "
                               "of pairs")
    rows = read_rows(path)
    require(rows, path, [*([IMAGE] if need_image else []), *modalities], optional="id, label")
    out = []
    for i, (_, row) in enumerate(rows):
        row.setdefault("id", str(i))
        for key in (IMAGE, *modalities):
            if row.get(key):
                row[key] = resolve(row[key], path)
        out.append(row)
    return out


class ManifestPairs(Dataset):
    """(X, image or caption) pairs from manifest rows. Unreadable rows yield ``None`` (skipped)."""

    def __init__(self, rows: List[Dict[str, Any]], modality: str, preprocessor: Callable, anchor: Any,
                 target: str, train: bool, augment: Optional[Callable] = None,
                 label_index: Optional[Dict[str, int]] = None, templates: Optional[List[str]] = None,
                 classnames: Optional[List[str]] = None, cache: Any = None, raw: bool = False) -> None:
        self.rows, self.modality, self.preprocessor, self.anchor = rows, modality, preprocessor, anchor
        self.cache = cache  # an AnchorCache: the image side is its embedding of the row's image
        self.raw = raw  # X as the preprocessor's raw clips (features computed on the device)
        self.target, self.train, self.augment = target, train, augment
        self.label_index, self.templates, self.classnames = label_index or {}, templates or [], classnames or []
        self.failures: Counter = Counter()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Optional[Dict[str, Any]]:
        row = self.rows[i]
        try:
            if self.raw:  # resampling, features and augmentation run batched on the device
                x = self.preprocessor.raw(row[self.modality], train=self.train)
            elif self.augment is not None and getattr(self.augment, "variants", 0):  # waveform augmentation
                x = self.augment.raw(row[self.modality], self.preprocessor, count=1)  # (1, ...)
            else:
                x = self.preprocessor(row[self.modality], train=self.train)  # (K, ...)
            if self.augment is not None and not self.raw:
                x = self.augment(x[0].clone())[None]
            item: Dict[Any, Any] = {self.modality: x}
            if row.get("label") not in (None, ""):
                item["label"] = self.label_index[str(row["label"])]
            if self.target == IMAGE:
                key, value = image_target(self.cache, self.anchor, row[IMAGE], row[IMAGE])
                item[key] = value
            elif self.target == TEXT:
                caption = random.choice(self.templates).format(self.classnames[item["label"]])
                item[TEXT] = self.anchor.tokenize([caption])[0]
            return item
        except BinderInputError as err:
            if not self.failures[row["id"]]:
                log.warning("skipping manifest row %s: %s", row["id"], err)
            self.failures[row["id"]] += 1
            return None


def collate_skipping(items: List[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """Collate the readable items of a batch (``None`` marks an unreadable row)."""
    items = [x for x in items if x is not None]
    return default_collate(pad_raw(items)) if items else None


def _check_row(row: Dict[str, Any], keys: Sequence[str], modality: str, preprocessor: Callable, anchor: Any,
               full: bool, cache: Any = None) -> Optional[str]:
    """Why a row is unusable, or None."""
    for key in keys:
        if not row.get(key):
            return f"empty {key} column"
        if not Path(row[key]).is_file():
            return f"missing {key} file"
    if not full:
        return None
    if IMAGE in keys and cache is not None and row[IMAGE] not in cache:
        return "unreadable: its image is not in the anchor cache"
    try:
        if IMAGE in keys and cache is None:
            anchor.preprocess_image(row[IMAGE])
        preprocessor(row[modality], num_clips=1)
    except BinderInputError as err:
        return f"unreadable: {err}"
    return None


def validate_rows(rows: List[Dict[str, Any]], modality: str, preprocessor: Callable, anchor: Any,
                  full: bool, need_image: bool = True, cache: Any = None) -> List[Dict[str, Any]]:
    """Drop rows with missing (and, if ``full``, unreadable) files; log how many and why."""
    good, reasons = [], Counter()
    keys = [IMAGE, modality] if need_image else [modality]
    for row in progress(rows, f"checking {modality} rows", enabled=len(rows) >= 200):
        why = _check_row(row, keys, modality, preprocessor, anchor, full, cache)
        if why is None:
            good.append(row)
        else:
            reasons[why.split(":")[0]] += 1
            log.debug("manifest row %s skipped: %s", row.get("id"), why)
    if reasons:
        log.warning("manifest %s: skipped %d of %d rows (%s)", modality, len(rows) - len(good), len(rows),
                    ", ".join(f"{n} {r}" for r, n in reasons.items()))
    if not good:
        raise BinderInputError(f"manifest has no usable {modality} rows out of {len(rows)} ({dict(reasons)})")
    return good


class ManifestDataModule(PairedDataModule):
    """Train/val pairs from a manifest (see :class:`ManifestConfig`), one dataset per modality."""

    Config = ManifestConfig
    reads_per_step = True  # decodes every pair on every read: device features pay

    def __init__(self, model: Any, modalities: Sequence[str], target: str = "image", **options: Any) -> None:
        super().__init__(model, modalities, target, **options)
        self.skipped = 0
        self.train_rows: Dict[str, List[Dict[str, Any]]] = {}
        self.val_rows: Dict[str, List[Dict[str, Any]]] = {}

    @classmethod
    def check(cls, options: Dict[str, Any], modalities: Sequence[str], target: str) -> str:
        cfg = build_dataclass(ManifestConfig, options, "data")
        rows = read_manifest(cfg.path, modalities, need_image=target == IMAGE)
        if cfg.val_path:
            read_manifest(cfg.val_path, modalities, need_image=target == IMAGE)
        keys = [IMAGE] if target == IMAGE else []
        for m in modalities:  # files must exist (decoding them waits for setup)
            usable = [r for r in rows if all(r.get(k) and Path(r[k]).is_file() for k in (*keys, m))]
            if not usable:
                raise BinderInputError(f"manifest {cfg.path!r} has no usable {m} rows out of {len(rows)}: no row "
                                       f"has existing {' and '.join((*keys, m))} files")
        return f"manifest {Path(cfg.path).expanduser().resolve()}"

    def _usable(self, rows: List[Dict[str, Any]], modality: str) -> List[Dict[str, Any]]:
        rows = [r for r in rows if r.get(modality)]
        good = validate_rows(rows, modality, self.preprocessors[modality], self.anchor, self.cfg.validate,
                             need_image=self.target == IMAGE, cache=self.target_cache)
        self.skipped += len(rows) - len(good)
        return good

    def fingerprint(self) -> Dict[str, Any]:
        """The base fingerprint plus a digest of the rows each modality trains and validates on."""
        rows = {m: [(r.get("id"), r.get(m), r.get(IMAGE))
                    for r in self.train_rows.get(m, []) + self.val_rows.get(m, [])] for m in self.modalities}
        return {**super().fingerprint(), "rows": digest(rows)}

    def anchor_images(self) -> AnchorImages:
        """Every existing image of the manifest(s), keyed by its path; the data fingerprint is
        the paths with their sizes and modification times."""
        paths = [self.cfg.path, *([self.cfg.val_path] if self.cfg.val_path else [])]
        images = sorted({r[IMAGE] for p in paths for r in read_manifest(p, self.modalities) if r.get(IMAGE)})
        stats = []
        for path in images:
            try:
                st = Path(path).stat()
                stats.append((path, st.st_size, st.st_mtime_ns))
            except OSError:
                stats.append((path, -1, -1))
        return AnchorImages(images, images.__getitem__, digest(stats))

    def _labels(self, rows: List[Dict[str, Any]]) -> None:
        labels = sorted({str(r["label"]) for r in rows if r.get("label") not in (None, "")})
        if self.cfg.classnames:
            self._classnames = list(self.cfg.classnames)
            self.label_index = {str(i): i for i in range(len(self._classnames))}
            self.label_index.update({name: i for i, name in enumerate(self._classnames)})
        else:
            self._classnames, self.label_index = labels, {name: i for i, name in enumerate(labels)}
        unknown = [lab for lab in labels if lab not in self.label_index]
        if unknown:
            raise BinderInputError(f"manifest labels {unknown[:5]} are not in data.classnames {self._classnames}")
        if self.target in (TEXT, "label") and not labels:
            raise BinderInputError(f"target={self.target} needs a `label` column in the manifest")

    @property
    def classnames(self) -> List[str]:
        return getattr(self, "_classnames", [])

    @property
    def templates(self) -> List[str]:
        return list(self.cfg.templates)

    def _split(self) -> tuple:
        need_image = self.target == IMAGE
        rows = read_manifest(self.cfg.path, self.modalities, need_image)
        if self.cfg.val_path:
            return rows, read_manifest(self.cfg.val_path, self.modalities, need_image)
        order = np.random.default_rng(self.cfg.seed).permutation(len(rows))
        n_val = int(round(len(rows) * self.cfg.val_fraction)) if len(rows) > 1 else 0
        return [rows[i] for i in order[n_val:]], [rows[i] for i in order[:n_val]]

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_rows:
            return
        train, val = self._split()
        for m in self.modalities:
            self.train_rows[m], self.val_rows[m] = self._usable(train, m), self._usable(val, m) if val else []
        self._labels([r for m in self.modalities for r in self.train_rows[m] + self.val_rows[m]])
        common = dict(anchor=self.anchor, target=self.target, label_index=self.label_index,
                      templates=self.templates, classnames=self.classnames, cache=self.target_cache)
        for m in self.modalities:
            pre = self.preprocessors[m]
            raw = m in self.device_features
            self.train_sets[m] = ManifestPairs(self.train_rows[m], m, pre, train=True, augment=self.augments[m],
                                               raw=raw, **common)
            self.val_sets[m] = ManifestPairs(self.val_rows[m], m, pre, train=False, raw=raw, **common)
            log.info("manifest %s: %d train / %d val pairs", m, len(self.train_sets[m]), len(self.val_sets[m]))
        if self.skipped:
            log.info("manifest: %d rows skipped in all", self.skipped)

    def train_dataloader(self) -> CombinedLoader:
        return combine({m: DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=True,
                                      drop_last=len(ds) > self.cfg.batch_size, num_workers=self.cfg.num_workers,
                                      pin_memory=self.pin_memory,
                                      collate_fn=collate_skipping)
                        for m, ds in self.train_sets.items()})

    def val_dataloader(self) -> List[DataLoader]:
        return [DataLoader(self.val_sets[m], batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers,
                           pin_memory=self.pin_memory,
                           collate_fn=collate_skipping) for m in self.val_modalities]

    def zero_shot_set(self, modality: str) -> tuple:
        """Held-out X paths and label indices (empty without labels)."""
        rows = [r for r in self.val_rows.get(modality, []) if r.get("label") not in (None, "")]
        return [r[modality] for r in rows], np.array([self.label_index[str(r["label"])] for r in rows], dtype=np.int64)
