"""The offline digits world: spoken digits (FSDD) paired with MNIST images of the same digit.

Pairs are drawn afresh every time an item is read, so every epoch re-pairs each recording with a
new MNIST instance of its class. Held-out data never overlaps training data: MNIST instances
from ``mnist_test_from`` on are test images, and FSDD takes ``0..test_takes-1`` (the dataset's
usual split) or whole ``test_speakers`` are test recordings. The captions' class names and
templates live here too; the anchor's training batches are made in ``caption_batches``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from binder.datasets.fsdd import Recording, list_recordings
from binder.datasets.instances import InstancePairs, render_fixed
from binder.datasets.mnist import load_mnist
from binder.datasets.paths import data_root
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from binder.config import SCHEMAS, build_dataclass
from binder.training.cache import AnchorImages, CachedImages, target_key
from binder.training.data import PairedDataModule, combine
from binder.errors import BinderConfigError, BinderInputError
from binder.logs import progress
from binder.datasets.sources import digits_modalities, digits_source
from binder.datasets.synthetic_speech import ESPEAK_BOUNDS, ESPEAK_PROSODY, FLITE_BOUNDS, FLITE_PROSODY, check_prosody
from binder.types import IMAGE, TEXT

log = logging.getLogger(__name__)

CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

TEMPLATES = [
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a picture of a {}.",
    "a scan of a handwritten digit {}.",
    "a drawing of the number {}.",
    "an image of the digit {}.",
    "the digit {} written by hand.",
    "a black and white photo of a {}.",
    "a blurry photo of the number {}.",
    "a sketch of the digit {}.",
    "someone wrote a {}.",
    "a small image of a {}.",
    "a {} in white ink on black.",
    "this is the digit {}.",
    "a grayscale picture of the number {}.",
]


@dataclass
class DigitsConfig:
    """Splits and loader settings for the digits world (the schema of ``data=digits``)."""

    _target_: str = "binder.datasets.digits.DigitsDataModule"
    root: Optional[str] = None  # data root holding fsdd/ and mnist/; None -> $BINDER_DATA or ../shared/data
    mnist_split: str = "t10k"  # which MNIST IDX files to read
    mnist_test_from: int = 8000  # MNIST instances with index >= this are held out
    holdout: str = "takes"  # takes | speakers: how FSDD recordings are held out
    test_takes: int = 5  # with holdout=takes, takes 0..test_takes-1 are test
    test_speakers: List[str] = field(default_factory=lambda: ["yweweler"])  # with holdout=speakers
    speakers: Optional[List[str]] = None  # FSDD speakers to use at all (None: every one), e.g. to adapt to one
    synthetic_speakers: int = 0  # text-to-speech voices added to the training split (needs binder-embed[speech])
    synthetic_takes: int = 10  # takes of each digit per synthetic voice
    synthetic_flite_speakers: int = 0  # CMU Flite voices added too (needs the `flite` program)
    flite_voices: List[str] = field(default_factory=list)  # Flite voices to draw from: built-in names,
    # .flitevox files or festvox.org voice names (cmu_us_..., downloaded once); empty: every built-in one
    espeak_prosody: Dict[str, List[float]] = field(default_factory=lambda: dict(ESPEAK_PROSODY))  # [low, high]
    # ranges an eSpeak speaker's rate (words/minute), pitch and pitch range (0-100) are drawn from
    flite_prosody: Dict[str, List[float]] = field(default_factory=lambda: dict(FLITE_PROSODY))  # [low, high]
    # ranges a Flite speaker's duration stretch, mean pitch (Hz) and pitch deviation (Hz) are drawn from
    synthetic_share: Optional[float] = None  # share of each epoch's training pairs drawn from the synthetic
    # voices (sampled with replacement, the epoch's size kept); None: their share of the clips
    batch_size: int = 64  # pairs per training batch
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # seed of the fixed validation pairing and of the held-out renders
    epoch_size: int = 2000  # rendered modalities: training pairs per epoch (fresh renders each read)
    augment: bool = True  # each modality's train-time augmentation

    def __post_init__(self) -> None:
        if self.holdout not in ("takes", "speakers"):
            raise BinderConfigError(f"data.holdout must be 'takes' or 'speakers', got {self.holdout!r}")
        if self.synthetic_speakers < 0 or self.synthetic_flite_speakers < 0 or self.synthetic_takes < 1:
            raise BinderConfigError("data.synthetic_speakers and data.synthetic_flite_speakers must be >= 0 and "
                                    f"data.synthetic_takes >= 1, got {self.synthetic_speakers}, "
                                    f"{self.synthetic_flite_speakers}, {self.synthetic_takes}")
        check_prosody("data.espeak_prosody", self.espeak_prosody, ESPEAK_BOUNDS)
        check_prosody("data.flite_prosody", self.flite_prosody, FLITE_BOUNDS)
        if self.synthetic_share is not None and not 0 < self.synthetic_share < 1:
            raise BinderConfigError(f"data.synthetic_share must be in (0, 1) or null, got {self.synthetic_share!r}")
        if self.synthetic_share is not None and not (self.synthetic_speakers or self.synthetic_flite_speakers):
            raise BinderConfigError(f"data.synthetic_share={self.synthetic_share} shares epochs with synthetic voices, "
                                    "and there are none: set data.synthetic_speakers or data.synthetic_flite_speakers")
        if self.batch_size < 1 or self.epoch_size < 1 or self.num_workers < 0:
            raise BinderConfigError(f"data.batch_size and data.epoch_size must be >= 1 and num_workers >= 0, got "
                                    f"{self.batch_size}, {self.epoch_size}, {self.num_workers}")


SCHEMAS.register("data/digits", DigitsConfig)


class DigitsWorld:
    """MNIST + FSDD with their held-out splits."""

    def __init__(self, cfg: DigitsConfig) -> None:
        self.cfg = cfg
        root = data_root(cfg.root)
        self.images, self.labels = load_mnist(root / "mnist", cfg.mnist_split)  # (N, 28, 28), (N,)
        self.recordings = list_recordings(root / "fsdd")
        if cfg.speakers is not None:
            self.recordings = [r for r in self.recordings if r.speaker in cfg.speakers]
        if cfg.synthetic_speakers or cfg.synthetic_flite_speakers:
            self.recordings += synthetic_recordings(cfg)

    def image_indices(self, split: str) -> np.ndarray:
        """MNIST instance indices of ``split`` ('train' or 'test')."""
        idx = np.arange(len(self.images))
        return idx[idx < self.cfg.mnist_test_from] if split == "train" else idx[idx >= self.cfg.mnist_test_from]

    def is_test_recording(self, rec: Recording) -> bool:
        if rec.synthetic:
            return False
        if self.cfg.holdout == "speakers":
            return rec.speaker in self.cfg.test_speakers
        return rec.take < self.cfg.test_takes

    def recordings_of(self, split: str) -> List[Recording]:
        """FSDD recordings of ``split``."""
        want_test = split == "test"
        recs = [r for r in self.recordings if self.is_test_recording(r) == want_test]
        if not recs:
            raise BinderInputError(f"the digits {split} split holds no recordings (check data.holdout)")
        return recs

    def pil(self, index: int) -> Image.Image:
        """MNIST instance ``index`` as a PIL image."""
        return Image.fromarray(self.images[index], mode="L")


def synthetic_engines(cfg: DigitsConfig) -> List[Tuple[int, Any]]:
    """(speakers, started engine) for each text-to-speech engine the config asks voices of."""
    from binder.datasets.synthetic_speech import Espeak, Flite

    wanted = [(cfg.synthetic_speakers, lambda: Espeak(cfg.espeak_prosody)),
              (cfg.synthetic_flite_speakers, lambda: Flite(cfg.flite_voices, prosody=cfg.flite_prosody))]
    return [(count, start()) for count, start in wanted if count]


def share_weights(paths: Sequence[Path], world: DigitsWorld, share: float) -> np.ndarray:
    """Sampling weights (N,) that draw ``share`` of an epoch from the synthetic voices' clips among
    ``paths`` and the rest from the recordings, each clip of a kind equally often."""
    synthetic = {r.path for r in world.recordings if r.synthetic}
    is_synthetic = np.array([p in synthetic for p in paths])
    count = int(is_synthetic.sum())
    if count == 0 or count == len(paths):
        raise BinderConfigError(f"data.synthetic_share={share} needs both recordings and synthetic voices in the "
                                f"training split; it holds {count} synthetic clips of {len(paths)} (set "
                                "data.synthetic_speakers or data.synthetic_flite_speakers, or synthetic_share=null)")
    return np.where(is_synthetic, share / count, (1 - share) / (len(paths) - count))


def synthetic_recordings(cfg: DigitsConfig) -> List[Recording]:
    """The text-to-speech voices' digits (eSpeak NG, then Flite), as training recordings."""
    from binder.datasets.synthetic_speech import synthetic_digits

    folders = [synthetic_digits(count, cfg.synthetic_takes, cfg.seed, CLASSNAMES, tts=tts)
               for count, tts in synthetic_engines(cfg)]
    return [dataclasses.replace(r, synthetic=True) for folder in folders for r in list_recordings(folder)]


def preprocess_images(world: DigitsWorld, indices: np.ndarray, preprocess: Callable) -> torch.Tensor:
    """Run the anchor's image transform over MNIST instances -> (N, 3, H, W)."""
    return torch.stack([preprocess(world.pil(int(i))) for i in indices])


def tokenize_prompts(tokenize: Callable, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Token ids for every (template, class) caption -> (T, C, L)."""
    tokens = [tokenize([t.format(c) for c in classnames]) for t in templates]
    return torch.stack(tokens)


class PairedDigits(Dataset):
    """(X, image-or-caption) pairs: item i is X_i with a fresh target of the same class.

    Args:
        inputs: Preprocessed X per item, each (K, ...) with K clips.
        labels: Class of each item (N,).
        target: ``image`` (a random MNIST instance of the class from ``images``), ``text``
            (a random caption of the class from ``captions``) or ``label`` (class index only).
        augment: Optional train-time augmentation applied to one clip of X.
        fixed_seed: If set, targets are fixed (validation); else redrawn on every read.
    """

    def __init__(
        self, modality: str, inputs: List[torch.Tensor], labels: np.ndarray, target: str,
        images: Optional[torch.Tensor] = None, image_labels: Optional[np.ndarray] = None,
        captions: Optional[torch.Tensor] = None, augment: Optional[Callable] = None,
        fixed_seed: Optional[int] = None,
    ) -> None:
        self.modality, self.inputs, self.labels = modality, inputs, np.asarray(labels)
        self.target, self.images, self.captions, self.augment = target, images, captions, augment
        if target == "image":
            self.pools = {c: np.flatnonzero(image_labels == c) for c in np.unique(self.labels)}
        self.fixed = None
        if fixed_seed is not None:
            rng = np.random.default_rng(fixed_seed)
            self.fixed = [self._draw(i, rng) for i in range(len(self))]

    def __len__(self) -> int:
        return len(self.inputs)

    def _draw(self, i: int, rng: np.random.Generator) -> int:
        """Index of a target for item i: an MNIST instance or a template, same class."""
        if self.target == "image":
            pool = self.pools[int(self.labels[i])]
            return int(pool[rng.integers(len(pool))])
        if self.target == "text":
            return int(rng.integers(self.captions.shape[0]))
        return -1

    def __getitem__(self, i: int) -> Dict[str, Any]:
        x = self.inputs[i]  # (K, ...)
        if self.augment is not None:
            k = random.randrange(x.shape[0])
            x = self.augment(x[k].clone())[None]  # (1, ...)
        j = self.fixed[i] if self.fixed is not None else self._draw(i, np.random.default_rng(random.getrandbits(32)))
        label = int(self.labels[i])
        item = {self.modality: x, "label": label}
        if self.target == "image":
            item[target_key(self.images)] = self.images[j]  # the image, or its cached embedding
        elif self.target == "text":
            item[TEXT] = self.captions[j, label]
        return item


class DigitsDataModule(PairedDataModule):
    """(X, image), (X, caption) or (X, label) pairs of the digits world for each bound modality.

    Modalities the digits world records (audio: real spoken digits) are paired with a random MNIST
    image of their class; modalities it renders are rendered from one MNIST instance and paired
    with that same instance (:mod:`binder.datasets.sources`). Any modality with a registered
    source works, plugins included.
    """

    Config = DigitsConfig

    def __init__(self, model: Any, modalities: Sequence[str], target: str = "image", **options: Any) -> None:
        super().__init__(model, modalities, target, **options)
        for m in self.modalities:
            if digits_source(m) is None:
                raise BinderConfigError(f"the digits world has no {m} data; it has {digits_modalities()} "
                                        "(use data=manifest for your own pairs)")
        self.world: Optional[DigitsWorld] = None
        self.test_items: Dict[str, list] = {}
        self.test_labels: Dict[str, np.ndarray] = {}
        self.train_weights: Dict[str, np.ndarray] = {}  # per-item sampling weights (data.synthetic_share)

    @classmethod
    def check(cls, options: Dict[str, Any], modalities: Sequence[str], target: str) -> str:
        cfg = build_dataclass(DigitsConfig, options, "data")
        root = data_root(cfg.root)
        for folder in ("mnist", "fsdd"):
            if folder == "fsdd" and not any(getattr(digits_source(m), "recordings", None) for m in modalities):
                continue
            if not (root / folder).is_dir():
                raise BinderConfigError(f"data root {str(root)!r} has no {folder}/ folder; set data.root or "
                                        "BINDER_DATA to a folder with mnist/ and fsdd/ (python -m "
                                        "binder.datasets.download --root DIR)")
        synthetic_engines(cfg)  # eSpeak NG / Flite are installed and start, before anything expensive
        missing = [m for m in modalities if digits_source(m) is None]
        if missing:
            raise BinderConfigError(f"the digits world has no {missing} data; it has {digits_modalities()}")
        return f"digits world at {root}"

    @property
    def classnames(self) -> List[str]:
        return CLASSNAMES

    @property
    def templates(self) -> List[str]:
        return TEMPLATES

    def setup(self, stage: Optional[str] = None) -> None:
        if self.world is not None:
            return
        self.world = DigitsWorld(self.cfg)
        captions = tokenize_prompts(self.anchor.tokenize, CLASSNAMES, TEMPLATES) if self.target == TEXT else None
        images = {split: self._images(split) for split in ("train", "test")} if self.target == IMAGE else {}
        for m in self.modalities:
            for split in ("train", "test"):
                make = self._recorded_split if digits_source(m).recordings else self._rendered_split
                ds = make(m, split, images.get(split), captions)
                (self.train_sets if split == "train" else self.val_sets)[m] = ds
            log.info("digits %s: %d train / %d test pairs", m, len(self.train_sets[m]), len(self.val_sets[m]))

    def _images(self, split: str) -> Any:
        """The split's images through the anchor's transform, or their cached embeddings."""
        idx = self.world.image_indices(split)
        if self.target_cache is not None:
            return CachedImages(self.target_cache, [str(i) for i in idx])
        return preprocess_images(self.world, idx, self.anchor.preprocess_image)

    def anchor_images(self) -> AnchorImages:
        """Every MNIST instance of the split file, keyed by its index (the anchor cache's images)."""
        world = self.world or DigitsWorld(self.cfg)
        data = hashlib.sha256(f"{self.cfg.mnist_split}:{world.images.shape}".encode())
        data.update(np.ascontiguousarray(world.images).tobytes())
        return AnchorImages([str(i) for i in range(len(world.images))], world.pil, data.hexdigest())

    def _recorded_split(self, modality: str, split: str, images: Optional[torch.Tensor],
                        captions: Optional[torch.Tensor]) -> Dataset:
        """Recordings (audio) paired with a random image of their class."""
        raw, labels = digits_source(modality).recordings(self.world, split)
        if split == "train" and self.cfg.synthetic_share is not None:  # checked before the clips are made
            self.train_weights[modality] = share_weights(raw, self.world, self.cfg.synthetic_share)
        pre, augment = self.preprocessors[modality], self.augments[modality] if split == "train" else None
        variants = getattr(augment, "variants", 0)  # waveform-augmented copies, made once (picked like clips)
        items = [torch.cat([pre(r, num_clips=1), augment.raw(r, pre)]) if variants else pre(r, num_clips=1)
                 for r in progress(raw, f"{modality} {split}" + (f" (+{variants} variants each)" if variants else ""))]
        if split == "test":
            self.test_items[modality], self.test_labels[modality] = list(raw), np.asarray(labels)
        return PairedDigits(
            modality, items, labels, self.target, images=images,
            image_labels=self.world.labels[self.world.image_indices(split)], captions=captions,
            augment=self.augments[modality] if split == "train" else None,
            fixed_seed=None if split == "train" else self.cfg.seed)

    def _rendered_split(self, modality: str, split: str, images: Optional[torch.Tensor],
                        captions: Optional[torch.Tensor]) -> Dataset:
        """X rendered from each MNIST instance, paired with that same instance."""
        render = digits_source(modality).render
        idx = self.world.image_indices(split)
        digits, labels = self.world.images[idx], self.world.labels[idx]
        fixed = None
        if split == "test":
            fixed = render_fixed(render, progress(digits, f"render {modality} test"), self.cfg.seed)
            self.test_items[modality], self.test_labels[modality] = fixed, np.asarray(labels)
        return InstancePairs(
            modality, digits, labels, render, self.preprocessors[modality], self.target, images=images,
            captions=captions, augment=self.augments[modality] if split == "train" else None, fixed=fixed,
            epoch_size=self.cfg.epoch_size)

    def train_dataloader(self) -> CombinedLoader:
        return combine({m: DataLoader(self.train_sets[m], batch_size=self.cfg.batch_size, drop_last=True,
                                      **self._order(m), num_workers=self.cfg.num_workers, pin_memory=self.pin_memory,
                                      persistent_workers=self.cfg.num_workers > 0)
                        for m in self.modalities})

    def _order(self, modality: str) -> Dict[str, Any]:
        """A shuffled epoch, or one drawn by ``data.synthetic_share``'s weights (same size, with replacement)."""
        weights = self.train_weights.get(modality)
        if weights is None:
            return {"shuffle": True}
        return {"sampler": WeightedRandomSampler(torch.from_numpy(weights), num_samples=len(weights), replacement=True)}

    def val_dataloader(self) -> List[DataLoader]:
        return [DataLoader(self.val_sets[m], batch_size=self.cfg.batch_size * 2, num_workers=self.cfg.num_workers,
                           pin_memory=self.pin_memory)
                for m in self.val_modalities]

    def zero_shot_set(self, modality: str) -> tuple:
        """Held-out raw inputs (file paths or rendered items) and labels for zero-shot evaluation."""
        return list(self.test_items[modality]), np.asarray(self.test_labels[modality])
