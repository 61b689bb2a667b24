"""LLVIP: aligned visible / infrared (thermal) image pairs (Jia et al., ICCVW 2021, arXiv 2108.10831).

ImageBind binds thermal to images with LLVIP (arXiv 2305.05665, Table 9). The dataset's layout is
``<root>/visible/*.jpg`` and ``<root>/infrared/*.jpg`` where the same file name is the same scene
(LLVIP stores infrared as 3-channel JPEGs; the thermal preprocessor reduces them to one channel);
the official release adds ``train/`` and ``test/`` subfolders under each, which are used as the
train / validation split when present. Otherwise the split is deterministic by file name: a file
goes to validation when the CRC32 of its name falls in the first ``val_fraction`` of the range,
so adding files never moves existing ones. Unpaired and unreadable files are counted, logged and
skipped; nothing usable left is an error.

LLVIP has no class labels, so there is no zero-shot table; the validation loader yields the
whole validation set in one batch (up to ``max_val_batch``), so the logged
``val/acc/thermal->image`` is thermal -> image recall@1 over it, and :func:`recall_at_k` computes
recall@k with the public ``model.embed`` path.

The data is for non-commercial research use; cite the LLVIP paper (bupt-ai-cz/LLVIP on GitHub).
"""
from __future__ import annotations

import logging
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from binder.datasets.manifest import collate_skipping
from binder.datasets.paths import data_root
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from binder.config import SCHEMAS, build_dataclass
from binder.training.data import PairedDataModule, combine
from binder.errors import BinderConfigError, BinderInputError
from binder.types import IMAGE

THERMAL = "thermal"

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
Pair = Tuple[Path, Path]  # (infrared file, visible file)


@dataclass
class LLVIPConfig:
    """LLVIP's aligned visible/infrared pairs (the schema of ``data=llvip``)."""

    _target_: str = "binder.datasets.llvip.LLVIPDataModule"
    root: Optional[str] = None  # folder with visible/ and infrared/; None -> <data root>/llvip-samples
    val_fraction: float = 0.2  # flat layout: share of file names held out (by CRC32 of the name)
    validate: bool = True  # decode every pair once up front (else only check that both files exist)
    batch_size: int = 32  # pairs per training batch
    max_val_batch: int = 512  # the validation set is one batch up to this size (recall@1 over all of it)
    num_workers: int = 0  # DataLoader workers
    augment: bool = True  # the thermal train-time augmentation

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise BinderConfigError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


SCHEMAS.register("data/llvip", LLVIPConfig)


def llvip_root(explicit: Optional[str] = None) -> Path:
    """``explicit`` or ``<data root>/llvip-samples``; raises if it lacks visible/ and infrared/."""
    root = Path(explicit).expanduser().resolve() if explicit else data_root() / "llvip-samples"
    missing = [d for d in ("visible", "infrared") if not (root / d).is_dir()]
    if missing:
        raise BinderInputError(f"LLVIP root {str(root)!r} has no {' or '.join(missing)}/ folder; "
                               "expected <root>/visible/*.jpg and <root>/infrared/*.jpg")
    return root


def _images(folder: Path) -> Dict[str, Path]:
    """Image files directly in ``folder`` by file name."""
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def pair_files(visible: Path, infrared: Path) -> Tuple[List[Pair], int]:
    """(infrared, visible) pairs with the same file name, sorted by name, and the unpaired count."""
    vis, ir = _images(visible), _images(infrared)
    names = sorted(set(vis) & set(ir))
    unpaired = len(set(vis) ^ set(ir))
    if unpaired:
        log.warning("LLVIP %s: %d file(s) without a counterpart of the same name skipped", visible.parent, unpaired)
    return [(ir[n], vis[n]) for n in names], unpaired


def is_val_name(name: str, val_fraction: float) -> bool:
    """Deterministic split by file name: CRC32 of the name in the first ``val_fraction`` of 2^32."""
    return zlib.crc32(name.encode("utf-8")) < val_fraction * 2 ** 32


def find_pairs(root: Path, val_fraction: float) -> Tuple[List[Pair], List[Pair], int]:
    """Train and validation pairs under ``root`` (official train/test layout or flat) + unpaired count."""
    if (root / "visible" / "train").is_dir() and (root / "infrared" / "train").is_dir():
        train, u1 = pair_files(root / "visible" / "train", root / "infrared" / "train")
        val, u2 = pair_files(root / "visible" / "test", root / "infrared" / "test")
        return train, val, u1 + u2
    pairs, unpaired = pair_files(root / "visible", root / "infrared")
    val = [p for p in pairs if is_val_name(p[0].name, val_fraction)]
    train = [p for p in pairs if not is_val_name(p[0].name, val_fraction)]
    return train, val, unpaired


class ThermalImagePairs(Dataset):
    """(thermal, image) items from file pairs; an unreadable pair yields ``None`` (skipped)."""

    def __init__(self, pairs: Sequence[Pair], preprocessor: Callable, anchor: Any, train: bool,
                 augment: Optional[Callable] = None) -> None:
        self.pairs, self.preprocessor, self.anchor = list(pairs), preprocessor, anchor
        self.train, self.augment = train, augment
        self.failures: Counter = Counter()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Optional[Dict[Any, Any]]:
        ir, vis = self.pairs[i]
        try:
            x = self.preprocessor(ir, train=self.train)  # (1, 1, S, S)
            if self.augment is not None:
                x = self.augment(x[0].clone())[None]
            return {THERMAL: x, IMAGE: self.anchor.preprocess_image(vis)}
        except BinderInputError as err:
            if not self.failures[ir.name]:
                log.warning("skipping LLVIP pair %s: %s", ir.name, err)
            self.failures[ir.name] += 1
            return None


def usable_pairs(pairs: Sequence[Pair], preprocessor: Callable, anchor: Any,
                 decode: bool) -> Tuple[List[Pair], Counter]:
    """Pairs whose files exist (and, with ``decode``, preprocess) and the reasons for the others."""
    good, reasons = [], Counter()
    for ir, vis in pairs:
        if not ir.is_file() or not vis.is_file():
            reasons["missing file"] += 1
            continue
        if decode:
            try:
                preprocessor(ir)
                anchor.preprocess_image(vis)
            except BinderInputError as err:
                reasons["unreadable"] += 1
                log.warning("LLVIP pair %s skipped: %s", ir.name, err)
                continue
        good.append((ir, vis))
    return good, reasons


class LLVIPDataModule(PairedDataModule):
    """(thermal, image) pairs of LLVIP for binding thermal to the anchor's image space."""

    Config = LLVIPConfig
    targets = (IMAGE,)

    def __init__(self, model: Any, modalities: Sequence[str], target: str = "image", **options: Any) -> None:
        super().__init__(model, modalities, target, **options)
        if self.modalities != [THERMAL]:
            raise BinderConfigError(f"LLVIP holds thermal/image pairs; it cannot train {self.modalities}")
        self.train_pairs: Optional[List[Pair]] = None
        self.skipped: Counter = Counter()

    @classmethod
    def check(cls, options: Dict[str, Any], modalities: Sequence[str], target: str) -> str:
        cfg = build_dataclass(LLVIPConfig, options, "data")
        if list(modalities) != [THERMAL] or target != IMAGE:
            raise BinderConfigError(f"data=llvip pairs thermal with images: use modality=thermal target=image, "
                                    f"not modality={list(modalities)} target={target}")
        return f"LLVIP at {llvip_root(cfg.root)}"

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_pairs is not None:
            return
        root = llvip_root(self.cfg.root)
        train, val, unpaired = find_pairs(root, self.cfg.val_fraction)
        total = len(train) + len(val)
        pre = self.preprocessors[THERMAL]
        self.train_pairs, r1 = usable_pairs(train, pre, self.anchor, self.cfg.validate)
        self.val_pairs, r2 = usable_pairs(val, pre, self.anchor, self.cfg.validate)
        self.skipped = r1 + r2 + (Counter({"unpaired file": unpaired}) if unpaired else Counter())
        if not self.train_pairs:
            raise BinderInputError(f"LLVIP root {str(root)!r}: no usable training pair out of {total} paired names "
                                   f"({dict(self.skipped) or 'no pairs found'})")
        self.train_sets[THERMAL] = ThermalImagePairs(self.train_pairs, pre, self.anchor, True, self.augments[THERMAL])
        self.val_sets[THERMAL] = ThermalImagePairs(self.val_pairs, pre, self.anchor, False)
        log.info("LLVIP %s: %d train / %d val pairs; skipped %s", root, len(self.train_pairs), len(self.val_pairs),
                 dict(self.skipped) or "none")

    def train_dataloader(self) -> CombinedLoader:
        ds = self.train_sets[THERMAL]
        return combine({THERMAL: DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=True,
                                            drop_last=len(ds) > self.cfg.batch_size, num_workers=self.cfg.num_workers,
                                            collate_fn=collate_skipping)})

    def val_dataloader(self) -> List[DataLoader]:
        if not self.val_pairs:
            return []
        size = max(1, min(len(self.val_pairs), self.cfg.max_val_batch))
        return [DataLoader(self.val_sets[THERMAL], batch_size=size, num_workers=self.cfg.num_workers,
                           collate_fn=collate_skipping)]


@torch.no_grad()
def recall_at_k(model: Any, pairs: Sequence[Pair], ks: Sequence[int] = (1, 5),
                batch_size: int = 32) -> Dict[str, float]:
    """Thermal -> image retrieval recall@k (percent) over ``pairs`` with ``model.embed``."""
    emb = model.embed(batch_size=batch_size, progress=False, thermal=[str(ir) for ir, _ in pairs],
                      image=[str(vis) for _, vis in pairs])
    sims = emb[THERMAL] @ emb[IMAGE].T  # (N, N)
    ranks = (sims > sims.diagonal()[:, None]).sum(-1)  # images scored above the true pair
    out = {"n": len(pairs), "chance@1": 100.0 / max(1, len(pairs))}
    out.update({f"recall@{k}": 100.0 * (ranks < k).float().mean().item() for k in ks})
    return out
