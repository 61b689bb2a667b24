"""Enrollment: adapt a model's embeddings to one source (a speaker, a microphone, a sensor) from
a few unlabelled samples of it, without training.

A source the encoder never met shifts all its embeddings the same way: a speaker's voice moves
every one of their clips towards the digits it resembles. Subtracting the source's mean embedding
(the embedding-space form of per-speaker cepstral mean normalisation, a standard step of speaker
adaptation in speech recognition; see also Zhao et al., "Calibrate Before Use", ICML 2021, for the
same bias removed from a classifier's scores) takes that shift away. ``reference`` adds back the
mean embedding of the sources the model was trained on, so enrolled embeddings stay where the
modality's other embeddings lie (needed when they are compared with embeddings of the same
modality, e.g. audio-to-audio search; audio-to-text or -image scores rank alike either way)::

    speaker = binder.enroll(model, audio=unlabelled_clips_of_the_speaker)
    z = speaker(model.embed(audio=new_clips)["audio"])         # or speaker.embed(model, new_clips)
    speaker.save("george.enrollment.safetensors")

The enrollment samples should cover the content the model tells apart (e.g. several different
digits): the mean of one digit's clips would also remove that digit.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from binder.errors import BinderInputError, ModelLoadError
from binder.files import atomic_write
from binder.types import modality_name

log = logging.getLogger(__name__)

FORMAT = "binder-enrollment"
VERSION = 1
MIN_SAMPLES = 2  # the mean of one sample is that sample: enrolling it would map it to nothing


@dataclass(frozen=True)
class Enrollment:
    """A source's correction of one modality's embeddings: ``normalise(z + offset)``.

    Attributes:
        modality: The modality it corrects.
        offset: (D,) the reference centre minus the source's mean embedding.
        fingerprint: The model's fingerprint for ``modality`` (:meth:`BindModel.fingerprint`).
        n: Samples the source's mean was taken over.
        reference_n: Samples of the reference centre (0: none, the source's mean is only removed).
    """

    modality: str
    offset: torch.Tensor
    fingerprint: str
    n: int
    reference_n: int = 0

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings of this source -> (N, D) unit embeddings with its shift removed."""
        z = torch.as_tensor(embeddings)
        if z.ndim != 2 or z.shape[1] != self.offset.shape[0]:
            raise BinderInputError(f"enrollment of {self.modality}: expected (N, {self.offset.shape[0]}) embeddings, "
                                   f"got shape {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise BinderInputError(f"enrollment of {self.modality}: the embeddings hold NaN or infinite values")
        return F.normalize(z.float() + self.offset.to(z.device), dim=-1)  # (N, D)

    def embed(self, model: Any, inputs: Any, **kwargs: Any) -> torch.Tensor:
        """Embed raw ``inputs`` of this modality with ``model`` (the model enrolled on) and correct them."""
        check_model(self, model)
        kwargs.setdefault("progress", False)
        return self(model.embed(**kwargs, **{self.modality: inputs})[self.modality])

    def save(self, path: "str | Path") -> Path:
        """Write one safetensors file (the offset, with the rest as its metadata), atomically."""
        from safetensors.torch import save

        tensor = self.offset.detach().float().cpu().contiguous()
        meta = {"format": FORMAT, "version": str(VERSION), "modality": self.modality, "fingerprint": self.fingerprint,
                "n": str(self.n), "reference_n": str(self.reference_n), "sha256": _digest(tensor)}
        path = Path(path).expanduser()
        atomic_write(path, save({"offset": tensor}, metadata=meta))
        log.info("saved the %s enrollment (%d samples) to %s", self.modality, self.n, path)
        return path

    @classmethod
    def load(cls, path: "str | Path", model: Any = None) -> "Enrollment":
        """Read a file written by :meth:`save`; with ``model``, refuse one enrolled on another model.

        Raises:
            ModelLoadError: a missing, truncated or edited file, or another model's enrollment.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"enrollment file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta, offset = f.metadata() or {}, f.get_tensor("offset")
        except (SafetensorError, OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"{str(path)!r} is not a readable enrollment file (safetensors with an 'offset' "
                                 f"tensor): {err}") from None
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise ModelLoadError(f"{str(path)!r} is not a binder enrollment (format {FORMAT!r}, version {VERSION})")
        if offset.ndim != 1 or meta.get("sha256") != _digest(offset.float()):
            raise ModelLoadError(f"{str(path)!r}: the offset does not match its recorded SHA-256: the file was edited "
                                 "after saving")
        out = cls(meta["modality"], offset.float(), meta["fingerprint"], int(meta["n"]), int(meta["reference_n"]))
        if model is not None:
            check_model(out, model)
        return out


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()


def check_model(enrollment: Enrollment, model: Any) -> None:
    """Refuse a model whose embedding function differs from the one enrolled on."""
    if model.fingerprint(enrollment.modality) != enrollment.fingerprint:
        ours = model.fingerprint(enrollment.modality)[:12]
        raise ModelLoadError(f"this {enrollment.modality} enrollment was made with another model (fingerprint "
                             f"{enrollment.fingerprint[:12]}, this model's {ours}): enroll the source again with it")


def centre(embeddings: torch.Tensor, what: str) -> torch.Tensor:
    """The mean (D,) of (N, D) embeddings, with one clear error for too few or non-finite ones."""
    z = torch.as_tensor(embeddings).float()
    if z.ndim != 2 or len(z) < MIN_SAMPLES:
        raise BinderInputError(f"{what}: expected at least {MIN_SAMPLES} embeddings (N, D), got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise BinderInputError(f"{what}: the embeddings hold NaN or infinite values")
    return z.mean(0)


def from_embeddings(modality: str, source: torch.Tensor, fingerprint: str,
                    reference: Optional[torch.Tensor] = None) -> Enrollment:
    """An :class:`Enrollment` from a source's (N, D) embeddings (and a reference set's (M, D))."""
    offset = -centre(source, f"enrollment of {modality}")
    if reference is not None:
        ref = centre(reference, f"enrollment of {modality}: reference")
        if ref.shape != offset.shape:
            raise BinderInputError(f"enrollment of {modality}: reference embeddings of width {ref.shape[0]}, "
                                   f"source embeddings of width {offset.shape[0]}")
        offset = offset + ref
    return Enrollment(modality, offset, fingerprint, len(source), 0 if reference is None else len(reference))


def enroll(model: Any, *, reference: Any = None, batch_size: int = 32, sample_rate: Optional[float] = None,
           **inputs: Any) -> Enrollment:
    """Enroll one source from unlabelled samples: ``binder.enroll(model, audio=[clips of one speaker])``.

    Args:
        model: The model whose embeddings to correct.
        reference: Optional samples of the sources the model was trained on (same modality): their
            mean embedding is added back.
        batch_size, sample_rate: As :meth:`BindModel.embed`.
        **inputs: Exactly one ``modality=`` list of at least two samples of the source.

    Raises:
        BinderInputError: no or several modalities, a modality the model lacks, too few samples,
            a bad sample (named by :meth:`BindModel.embed`).
    """
    if len(inputs) != 1:
        raise BinderInputError(f"enroll() takes exactly one modality=samples, got {sorted(inputs) or 'none'}")
    (key, samples), = inputs.items()
    modality = modality_name(key)
    fingerprint = model.fingerprint(modality)  # an unknown modality fails here, before any embedding
    for name, items in (("samples", samples), ("reference", reference)):
        if items is not None and (not isinstance(items, list) or len(items) < MIN_SAMPLES):
            what = f"a list of {len(items)}" if isinstance(items, list) else f"one {type(items).__name__}"
            raise BinderInputError(f"enroll(): {modality} {name} must be a list of at least {MIN_SAMPLES} inputs "
                                   f"(one source's samples), got {what}")
    embed = dict(batch_size=batch_size, sample_rate=sample_rate, progress=False)
    source = model.embed(**embed, **{modality: samples})[modality]
    ref = None if reference is None else model.embed(**embed, **{modality: reference})[modality]
    out = from_embeddings(modality, source, fingerprint, ref)
    log.info("enrolled a %s source from %d samples%s", modality, out.n,
             f" (reference: {out.reference_n})" if ref is not None else "")
    return out

