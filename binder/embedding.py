"""Embedding: the one loop (:func:`embed_inputs`) and a model's ``embed(audio=[...], text=[...])``.

Inputs are raw (file paths, waveforms with their sample rate, PIL images, strings); each
modality's preprocessor (or the anchor's transform/tokenizer) turns them into model tensors,
which are embedded in batches without gradients on the model's own device (or the one given).
Every embedding that leaves binder is finite and unit-norm; an input that would give anything
else is a :class:`~binder.errors.BinderInputError` naming it (``on_error="raise"``, what
``embed`` does) or is skipped and reported with its reason (``on_error="skip"``, what index
building and evaluation do over thousands of files).
"""
from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from binder.errors import BinderError, BinderInputError
from binder.files import FileRecord
from binder.logs import progress as progress_bar
from binder.types import IMAGE, TEXT, modality_name

log = logging.getLogger(__name__)

def _is_pair(value: Any) -> bool:
    """``(samples, rate)``: one input with its int or float rate (e.g. (waveform, 16000))."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], numbers.Real)
            and not isinstance(value[1], bool))


def as_items(value: Any, modality: str = "") -> List[Any]:
    """A list (tuple, generator, numpy array of strings) of inputs, or one input -> list."""
    if isinstance(value, list):
        return value
    if _is_pair(value):
        return [value]
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "USO" and modality == TEXT:
        return [str(v) if value.dtype.kind in "US" else v for v in value.reshape(-1)]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes, np.ndarray, torch.Tensor)) and \
            not hasattr(value, "read") and not hasattr(value, "__fspath__") and not hasattr(value, "getpixel"):
        return list(value)
    return [value]


def check_batch_size(batch_size: Any) -> int:
    """A positive integer batch size, or a clear error."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise BinderInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


ON_ERROR = ("raise", "skip")


@dataclass
class Embedded:
    """What :func:`embed_inputs` made: the vectors of the inputs it could embed, and why the
    others were skipped (only under ``on_error="skip"``)."""

    vectors: np.ndarray  # (N', D) float32 unit vectors, in input order
    kept: List[int]  # positions of the embedded inputs, ascending
    skipped: List[Tuple[int, str]]  # (position, reason) of the inputs that could not be embedded
    files: List[Optional[FileRecord]]  # per kept input: its file as it was read (record_files), else None


class _Prepared(Dataset):
    """Input i -> (i, model tensor, file record) or (i, the error, None)."""

    def __init__(self, inputs: Sequence[Any], prepare: Callable[[Any], torch.Tensor], record_files: bool) -> None:
        self.inputs, self.prepare, self.record_files = inputs, prepare, record_files

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Tuple[int, Any, Optional[FileRecord]]:
        item = self.inputs[i]
        record = FileRecord.taken(item) if self.record_files else None  # before the file is read
        try:
            x = self.prepare(item)
        except Exception as err:  # a decoder's own error too: reported (skip) or raised in the main process
            return i, err, None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
            return i, BinderInputError("preprocessing gave NaN or infinite values"), None
        return i, x, record


def _collate(batch: List[Tuple[int, Any, Any]]) -> Tuple[List[int], Optional[torch.Tensor], List[Tuple[int, Any]],
                                                         List[Any]]:
    """(positions, stacked tensors, failures, file records): a batch keeps its most common shape
    and reports the other inputs (preprocessors with variable output)."""
    good = [(i, x, f) for i, x, f in batch if isinstance(x, torch.Tensor)]
    bad: List[Tuple[int, Any]] = [(i, x) for i, x, _ in batch if not isinstance(x, torch.Tensor)]
    shapes = {tuple(x.shape) for _, x, _ in good}
    if len(shapes) > 1:
        common = max(shapes, key=lambda s: sum(tuple(x.shape) == s for _, x, _ in good))
        bad += [(i, BinderInputError(f"preprocessed to shape {tuple(x.shape)}, the other inputs to {common}"))
                for i, x, _ in good if tuple(x.shape) != common]
        good = [g for g in good if tuple(g[1].shape) == common]
    stacked = torch.stack([x for _, x, _ in good]) if good else None
    return [i for i, _, _ in good], stacked, bad, [f for _, _, f in good]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the main process for cores


def _reason(err: BaseException) -> str:
    return str(err) if isinstance(err, BinderError) else f"{type(err).__name__}: {err}"


def _refuse(modality: str, position: int, err: BaseException) -> BinderInputError:
    """The error of ``on_error="raise"``: binder's own as it is, a decoder's naming the input."""
    if isinstance(err, BinderError):
        return err
    return BinderInputError(f"{modality} input {position} could not be read: {_reason(err)}")


@torch.no_grad()
def embed_inputs(model: Any, modality: str, inputs: Sequence[Any], *, batch_size: int = 32, num_workers: int = 0,
                 sample_rate: Optional[float] = None, on_error: str = "raise", load: Optional[Callable] = None,
                 record_files: bool = False, progress: bool = True, autocast: Optional[torch.dtype] = None) -> Embedded:
    """The one embedding loop of binder: ``model.embed``, index building and evaluation all run it.

    Inputs are read and preprocessed in DataLoader workers (``num_workers``; 0: in this process),
    embedded in batches on the model's device without gradients, and checked: every vector is
    finite and unit-norm.

    Args:
        model: A model with ``item_preprocessor`` and ``encode``.
        modality: What the inputs are.
        inputs: Raw inputs (file paths, ``(samples, rate)``, arrays, tensors, PIL images, strings).
        batch_size, num_workers: Inputs per forward pass; reading processes.
        sample_rate: The rate of waveforms given without one.
        on_error: ``raise`` the first input that cannot be embedded (binder's error naming it), or
            ``skip`` it and report it with its reason in :attr:`Embedded.skipped`.
        load: Turns an input into the raw input (e.g. an evaluation record into its file's contents).
        record_files: Record each path input's :class:`~binder.files.FileRecord` before reading it.
        progress: A progress bar on a terminal.
        autocast: Run the encoders under ``torch.autocast`` in this dtype (bf16/fp16 on a GPU);
            vectors still leave as float32 unit vectors.
    """
    if on_error not in ON_ERROR:
        raise BinderInputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    check_batch_size(batch_size)
    if modality == TEXT and load is None and on_error == "raise":  # name the input by its place in the list
        bad = next(((i, x) for i, x in enumerate(inputs) if not isinstance(x, str)), None)
        if bad is not None:
            raise BinderInputError(f"text input {bad[0]} is a {type(bad[1]).__name__}, expected a string")
    pre = model.item_preprocessor(modality)
    prepare = (lambda item: pre(load(item), sample_rate=sample_rate)) if load else \
        (lambda item: pre(item, sample_rate=sample_rate))
    loader = DataLoader(_Prepared(list(inputs), prepare, record_files), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, worker_init_fn=_worker_init if num_workers else None,
                        pin_memory=model.device.type == "cuda")
    out = Embedded(np.zeros((0, model.anchor.embed_dim), dtype=np.float32), [], [], [])
    was_training = model.training
    model.eval()
    try:
        parts = _run(model, modality, loader, on_error, progress, out, autocast)
    finally:
        model.train(was_training)
    if parts:
        out.vectors = np.concatenate(parts)
    return out


def _run(model: Any, modality: str, loader: DataLoader, on_error: str, progress: bool, out: Embedded,
         autocast: Optional[torch.dtype] = None) -> list:
    """Embed the loader's batches into ``out`` -> the (b, D) vector blocks."""
    import contextlib

    device = model.device
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    parts = []
    for idx, x, bad, files in progress_bar(loader, f"embed {modality}", enabled=progress, unit="batch"):
        if bad and on_error == "raise":
            raise _refuse(modality, *bad[0])
        out.skipped += [(i, _reason(err)) for i, err in bad]
        if x is None:
            continue
        with amp:
            z = model.encode(modality, x.to(device, non_blocking=True))
        z = z.float() if autocast is None else torch.nn.functional.normalize(z.float(), dim=-1)  # unit in float32
        z = z.cpu()  # (b, D)
        finite = torch.isfinite(z).all(-1).tolist()
        if on_error == "raise" and not all(finite):
            raise BinderInputError(f"{modality} input(s) {[i for i, ok in zip(idx, finite) if not ok][:5]} give "
                                   "non-finite embeddings (values too large or degenerate after preprocessing)")
        out.skipped += [(i, "non-finite embedding") for i, ok in zip(idx, finite) if not ok]
        out.kept += [i for i, ok in zip(idx, finite) if ok]
        out.files += [f for f, ok in zip(files, finite) if ok]
        parts.append(z[torch.tensor(finite, dtype=torch.bool)].numpy())
    return parts


class EmbedMixin:
    """Adds :meth:`embed` to a model that has ``encode``, ``anchor`` and ``preprocessors``."""

    def _missing(self, modality: str) -> BinderInputError:
        return BinderInputError(f"this model has no {modality} encoder; it embeds {self.modalities}")

    def item_preprocessor(self, modality: str) -> Callable[..., torch.Tensor]:
        """The function from one raw input of ``modality`` to its model tensor."""
        if modality == IMAGE:
            return lambda image, **_: self.anchor.preprocess_image(image)
        if modality == TEXT:
            return lambda text, **_: self.anchor.tokenize([text])[0]
        if modality not in self.preprocessors:
            raise self._missing(modality)
        return self.preprocessors[modality]

    def _target_device(self, device: "str | torch.device | None") -> torch.device:
        if device is None:
            return self.device
        device = torch.device(device)
        if device != self.device:
            self.to(device)
        return device

    @torch.no_grad()
    def embed(self, batch_size: int = 32, device: "str | torch.device | None" = None,
              sample_rate: Optional[float] = None, progress: bool = True, **inputs: Any) -> Dict[str, torch.Tensor]:
        """Embed raw inputs given per modality: ``model.embed(audio=[...], text=[...])``.

        Args:
            batch_size: Inputs per forward pass (a positive integer).
            device: Where to run; moves the model there. Default: where the model already is.
            sample_rate: Sample rate of waveforms (or frame rate of frame arrays) given without one.
            progress: Show a progress bar for long inputs.
            **inputs: ``modality=`` a list (or tuple, generator) of inputs, or a single input.

        Returns:
            ``{modality name: (N, D) float32 L2-normalised tensor on the CPU}``.
        """
        if not inputs:
            raise BinderInputError("embed() needs inputs, e.g. embed(audio=['a.wav'], text=['a dog'])")
        batch_size = check_batch_size(batch_size)
        device = self._target_device(device)
        was_training = self.training
        self.eval()
        try:
            return {modality_name(name): self._embed_one(modality_name(name), value, batch_size, device,
                                                         sample_rate, progress) for name, value in inputs.items()}
        finally:
            self.train(was_training)

    def _embed_one(self, modality: str, value: Any, batch_size: int, device: torch.device,
                   sample_rate: Optional[float], progress: bool) -> torch.Tensor:
        if modality not in self.modalities:
            raise self._missing(modality)
        items = as_items(value, modality)
        if not items:
            raise BinderInputError(f"embed(): no {modality} inputs given (an empty list)")
        done = embed_inputs(self, modality, items, batch_size=batch_size, sample_rate=sample_rate,
                            progress=progress and len(items) >= 4 * batch_size)
        return torch.from_numpy(done.vectors)
