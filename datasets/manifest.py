"""Users' own paired data from a manifest file: one row per (image, X) pair.

CSV (with a header) or JSON lines, columns ``image`` and the bound modality's name (e.g.
``audio``), optional ``id`` and ``label``. Relative paths are resolved against the manifest's
folder. Rows whose files are missing or unreadable are counted, reported and skipped, never
fatal; a manifest with no usable row is an error.
"""
from __future__ import annotations

import csv
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from binder.errors import BinderInputError
from binder.types import Modality

log = logging.getLogger(__name__)


@dataclass
class ManifestConfig:
    """Mirrors configs/data/manifest.yaml."""

    path: str = "???"  # CSV or .jsonl manifest
    val_path: Optional[str] = None  # held-out manifest; else val_fraction of the rows
    val_fraction: float = 0.1  # rows held out when val_path is not given
    classnames: Optional[List[str]] = None  # names for integer labels (zero-shot evaluation)
    templates: List[str] = field(default_factory=lambda: [
        "a photo of a {}.", "a {}.", "the sound of a {}.", "a picture of a {}."])  # class prompts
    validate: bool = True  # open every row's files up front
    batch_size: int = 64  # pairs per batch
    num_workers: int = 2  # DataLoader workers
    seed: int = 0  # seed of the train/val split


def read_manifest(path: "str | Path", modality: Modality) -> List[Dict[str, Any]]:
    """Rows of a CSV or JSON-lines manifest with absolute paths; checks the required columns."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BinderInputError(f"manifest {str(path)!r} does not exist")
    try:
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as err:
        raise BinderInputError(f"manifest {str(path)!r} is not valid CSV / JSON lines: {err}") from err
    need = {"image", modality.value}
    if not rows or not need <= set(rows[0]):
        raise BinderInputError(
            f"manifest {str(path)!r} needs columns {sorted(need)} (optional: id, label); "
            f"found {sorted(rows[0]) if rows else 'no rows'}"
        )
    for i, row in enumerate(rows):
        row.setdefault("id", str(i))
        for key in ("image", modality.value):
            if row.get(key):
                p = Path(str(row[key])).expanduser()
                row[key] = str(p if p.is_absolute() else path.parent / p)
    return rows


class ManifestPairs(Dataset):
    """(X, image or caption) pairs from manifest rows. Unreadable rows yield ``None`` (skipped)."""

    def __init__(self, rows: List[Dict[str, Any]], modality: Modality, preprocessor: Callable, anchor: Any,
                 partner: str, train: bool, augment: Optional[Callable] = None,
                 label_index: Optional[Dict[str, int]] = None, templates: Optional[List[str]] = None,
                 classnames: Optional[List[str]] = None) -> None:
        self.rows, self.modality, self.preprocessor, self.anchor = rows, modality, preprocessor, anchor
        self.partner, self.train, self.augment = partner, train, augment
        self.label_index, self.templates, self.classnames = label_index or {}, templates or [], classnames or []
        self.failures: Counter = Counter()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Optional[Dict[str, Any]]:
        row = self.rows[i]
        try:
            x = self.preprocessor(row[self.modality.value], train=self.train)  # (K, ...)
            if self.augment is not None:
                x = self.augment(x[0].clone())[None]
            item: Dict[Any, Any] = {self.modality: x}
            if row.get("label") not in (None, ""):
                item["label"] = self.label_index[str(row["label"])]
            if self.partner == "image":
                item[Modality.IMAGE] = self.anchor.preprocess_image(row["image"])
            else:
                caption = random.choice(self.templates).format(self.classnames[item["label"]])
                item[Modality.TEXT] = self.anchor.tokenize([caption])[0]
            return item
        except BinderInputError as err:
            if not self.failures[row["id"]]:
                log.warning("skipping manifest row %s: %s", row["id"], err)
            self.failures[row["id"]] += 1
            return None


def collate_skipping(items: List[Optional[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """Collate the readable items of a batch (``None`` marks an unreadable row)."""
    items = [x for x in items if x is not None]
    return default_collate(items) if items else None


def _check_row(row: Dict[str, Any], modality: Modality, preprocessor: Callable, anchor: Any) -> Optional[str]:
    """Why a row is unusable, or None."""
    for key in ("image", modality.value):
        if not row.get(key):
            return f"empty {key} column"
        if not Path(row[key]).is_file():
            return f"missing {key} file"
    try:
        anchor.preprocess_image(row["image"])
        preprocessor(row[modality.value], num_clips=1)
    except BinderInputError as err:
        return f"unreadable: {err}"
    return None


def validate_rows(rows: List[Dict[str, Any]], modality: Modality, preprocessor: Callable, anchor: Any,
                  full: bool) -> List[Dict[str, Any]]:
    """Drop rows with missing (and, if ``full``, unreadable) files; log how many and why."""
    good, reasons = [], Counter()
    for row in tqdm(rows, desc="checking manifest", leave=False, disable=len(rows) < 200):
        if full:
            why = _check_row(row, modality, preprocessor, anchor)
        else:
            missing = [k for k in ("image", modality.value) if not row.get(k) or not Path(row[k]).is_file()]
            why = f"missing {missing[0]} file" if missing else None
        if why is None:
            good.append(row)
        else:
            reasons[why.split(":")[0]] += 1
            log.debug("manifest row %s skipped: %s", row.get("id"), why)
    if reasons:
        log.warning("manifest: skipped %d of %d rows (%s)", len(rows) - len(good), len(rows),
                    ", ".join(f"{n} {r}" for r, n in reasons.items()))
    if not good:
        raise BinderInputError(f"manifest has no usable rows out of {len(rows)} ({dict(reasons)})")
    return good


class ManifestDataModule(L.LightningDataModule):
    """Train/val pairs from a manifest (see :class:`ManifestConfig`)."""

    def __init__(self, cfg: ManifestConfig, modality: Modality, preprocessor: Callable, anchor: Any,
                 partner: str = "image", augment: Optional[Callable] = None) -> None:
        super().__init__()
        self.cfg, self.modality, self.preprocessor, self.anchor = cfg, modality, preprocessor, anchor
        self.partner, self.augment = partner, augment
        self.skipped = 0
        self.train_rows: Optional[List[Dict[str, Any]]] = None

    def _rows(self, path: str) -> List[Dict[str, Any]]:
        rows = read_manifest(path, self.modality)
        good = validate_rows(rows, self.modality, self.preprocessor, self.anchor, self.cfg.validate)
        self.skipped += len(rows) - len(good)
        return good

    def _labels(self, rows: List[Dict[str, Any]]) -> None:
        labels = sorted({str(r["label"]) for r in rows if r.get("label") not in (None, "")})
        if self.cfg.classnames:
            self.classnames = list(self.cfg.classnames)
            self.label_index = {str(i): i for i in range(len(self.classnames))}
            self.label_index.update({name: i for i, name in enumerate(self.classnames)})
        else:
            self.classnames, self.label_index = labels, {name: i for i, name in enumerate(labels)}
        unknown = [l for l in labels if l not in self.label_index]
        if unknown:
            raise BinderInputError(f"manifest labels {unknown[:5]} are not in data.classnames {self.classnames}")
        if self.partner == "text" and not labels:
            raise BinderInputError("partner=text needs a `label` column in the manifest")

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_rows is not None:
            return
        rows = self._rows(self.cfg.path)
        if self.cfg.val_path:
            self.train_rows, self.val_rows = rows, self._rows(self.cfg.val_path)
        else:
            order = np.random.default_rng(self.cfg.seed).permutation(len(rows))
            n_val = int(round(len(rows) * self.cfg.val_fraction)) if len(rows) > 1 else 0
            self.val_rows = [rows[i] for i in order[:n_val]]
            self.train_rows = [rows[i] for i in order[n_val:]]
        self._labels(self.train_rows + self.val_rows)
        self.templates = list(self.cfg.templates)
        common = dict(modality=self.modality, preprocessor=self.preprocessor, anchor=self.anchor, partner=self.partner,
                      label_index=self.label_index, templates=self.templates, classnames=self.classnames)
        self.train_set = ManifestPairs(self.train_rows, train=True, augment=self.augment, **common)
        self.val_set = ManifestPairs(self.val_rows, train=False, **common)
        log.info("manifest: %d train / %d val pairs, %d rows skipped", len(self.train_set), len(self.val_set), self.skipped)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, shuffle=True, drop_last=len(self.train_set) > self.cfg.batch_size,
                          num_workers=self.cfg.num_workers, collate_fn=collate_skipping)

    def val_dataloader(self) -> List[DataLoader]:
        if not self.val_rows:
            return []
        return DataLoader(self.val_set, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers,
                          collate_fn=collate_skipping)

    def zero_shot_set(self) -> tuple:
        """Held-out X paths and label indices (empty without labels)."""
        rows = [r for r in self.val_rows if r.get("label") not in (None, "")]
        return [r[self.modality.value] for r in rows], np.array([self.label_index[str(r["label"])] for r in rows])
