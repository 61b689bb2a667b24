"""Enrollment: adapt a model's embeddings to one source (a speaker, a microphone, a sensor) from
unlabelled samples of it, without training.

A source the encoder never met moves its embeddings: a speaker's voice pulls every one of their
clips towards the digits it resembles, and spreads them along directions the training speakers
did not. Two corrections, each an affine map ``normalise((z - source mean) @ W + reference mean)``:

* ``align="mean"``: the source's mean embedding is removed (``W = I``), the embedding-space form
  of per-speaker cepstral mean normalisation, a standard step of speaker adaptation in speech
  recognition (the same bias removed from a classifier's scores: Zhao et al., "Calibrate Before
  Use", ICML 2021). ``reference`` (optional) adds back the mean of the sources the model was
  trained on, so enrolled embeddings stay where the modality's other embeddings lie (needed
  when they are compared with embeddings of the same modality, e.g. audio-to-audio search).
* ``align="coral"``: also the second moments, CORAL (Sun, Feng and Saenko, "Return of
  Frustratingly Easy Domain Adaptation", AAAI 2016): ``W = C_source^-1/2 C_reference^1/2``,
  whitening the source's covariance and colouring it with the reference's (both shrunk towards
  a multiple of the identity, ``shrinkage``, as a few hundred samples estimate a covariance
  poorly). Needs ``reference``: samples of the sources the model was trained on, and about 50
  samples of the source or more (with fewer, ``mean`` does better: benchmarks/enrollment.py).

::

    speaker = binder.enroll(model, audio=clips_of_the_speaker, reference=training_clips, align="coral")
    z = speaker(model.embed(audio=new_clips)["audio"])         # or speaker.embed(model, new_clips)
    speaker.save("george.safetensors")

The enrollment samples should cover the content the model tells apart (e.g. several different
digits): the mean of one digit's clips would also remove that digit.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from binder.errors import BinderInputError, ModelLoadError
from binder.files import atomic_write
from binder.types import modality_name

log = logging.getLogger(__name__)

FORMAT = "binder-enrollment"
VERSION = 1
MIN_SAMPLES = 2  # the mean of one sample is that sample: enrolling it would map it to nothing
CORAL_ADVISED = 50  # below this many samples CORAL lost to align="mean" on FSDD (benchmarks/enrollment.py)
ALIGNS = ("mean", "coral")


@dataclass(frozen=True)
class Enrollment:
    """A source's correction of one modality's embeddings:
    ``normalise((z - source_mean) @ matrix + reference_mean)``.

    Attributes:
        modality: The modality it corrects.
        source_mean: (D,) the source's mean embedding.
        fingerprint: The model's fingerprint for ``modality`` (:meth:`BindModel.fingerprint`).
        n: Samples of the source.
        reference_mean: (D,) the reference's mean embedding, or None (nothing added back).
        matrix: (D, D) CORAL's ``C_source^-1/2 C_reference^1/2``, or None (the identity).
        reference_n: Samples of the reference (0: none).
        align: ``mean`` or ``coral``.
    """

    modality: str
    source_mean: torch.Tensor
    fingerprint: str
    n: int
    reference_mean: Optional[torch.Tensor] = None
    matrix: Optional[torch.Tensor] = None
    reference_n: int = 0
    align: str = "mean"

    @property
    def dim(self) -> int:
        return int(self.source_mean.shape[0])

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings of this source -> (N, D) unit embeddings, corrected."""
        z = torch.as_tensor(embeddings)
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise BinderInputError(f"enrollment of {self.modality}: expected (N, {self.dim}) embeddings, "
                                   f"got shape {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise BinderInputError(f"enrollment of {self.modality}: the embeddings hold NaN or infinite values")
        out = z.float() - self.source_mean.to(z.device)  # (N, D)
        if self.matrix is not None:
            out = out @ self.matrix.to(z.device)  # (N, D) @ (D, D)
        if self.reference_mean is not None:
            out = out + self.reference_mean.to(z.device)
        return F.normalize(out, dim=-1)

    def embed(self, model: Any, inputs: Any, **kwargs: Any) -> torch.Tensor:
        """Embed raw ``inputs`` of this modality with ``model`` (the model enrolled on) and correct them."""
        check_model(self, model)
        kwargs.setdefault("progress", False)
        return self(model.embed(**kwargs, **{self.modality: inputs})[self.modality])

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The tensors a file holds (contiguous float32 on the CPU)."""
        named = {"source_mean": self.source_mean, "reference_mean": self.reference_mean, "matrix": self.matrix}
        return {k: v.detach().float().cpu().contiguous() for k, v in named.items() if v is not None}

    def save(self, path: "str | Path") -> Path:
        """Write one safetensors file (the tensors, with the rest as its metadata), atomically."""
        from safetensors.torch import save

        tensors = self.tensors()
        meta = {"format": FORMAT, "version": str(VERSION), "modality": self.modality, "fingerprint": self.fingerprint,
                "n": str(self.n), "reference_n": str(self.reference_n), "align": self.align}
        meta["sha256"] = _digest(tensors, meta)
        path = Path(path).expanduser()
        atomic_write(path, save(tensors, metadata=meta))
        log.info("saved the %s enrollment (%s, %d samples) to %s", self.modality, self.align, self.n, path)
        return path

    @classmethod
    def load(cls, path: "str | Path", model: Any = None) -> "Enrollment":
        """Read a file written by :meth:`save`; with ``model``, refuse one enrolled on another model.

        Raises:
            ModelLoadError: a missing, truncated or edited file, or another model's enrollment.
        """
        path = Path(path).expanduser()
        meta, tensors = _read(path)
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise ModelLoadError(f"{str(path)!r} is not a binder enrollment (format {FORMAT!r}, version {VERSION})")
        if meta.get("sha256") != _digest(tensors, {k: v for k, v in meta.items() if k != "sha256"}):
            raise ModelLoadError(f"{str(path)!r}: its tensors and fields do not match their recorded SHA-256: the file "
                                 "was edited after saving")
        _check_fields(path, meta, tensors)
        out = cls(meta["modality"], tensors["source_mean"], meta["fingerprint"], int(meta["n"]),
                  tensors.get("reference_mean"), tensors.get("matrix"), int(meta["reference_n"]), meta["align"])
        if model is not None:
            check_model(out, model)
        return out


def _read(path: Path) -> "tuple[Dict[str, str], Dict[str, torch.Tensor]]":
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelLoadError(f"enrollment file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), {k: f.get_tensor(k).float() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{str(path)!r} is not a readable enrollment file (safetensors): {err}") from None


def _check_fields(path: Path, meta: Dict[str, str], tensors: Dict[str, torch.Tensor]) -> None:
    """One ModelLoadError for a file whose fields or tensor shapes do not make an enrollment."""
    missing = [k for k in ("modality", "fingerprint", "n", "reference_n", "align") if k not in meta]
    mean = tensors.get("source_mean")
    d = int(mean.shape[0]) if mean is not None and mean.ndim == 1 else 0
    shapes_ok = d > 0 and all(tensors[k].shape == s for k, s in (("reference_mean", (d,)), ("matrix", (d, d)))
                              if k in tensors)
    if missing or meta.get("align") not in ALIGNS or not shapes_ok or not all(
            meta.get(k, "").isdigit() for k in ("n", "reference_n")):
        raise ModelLoadError(f"{str(path)!r} is not a well-formed enrollment (fields {sorted(meta)}, tensors "
                             f"{ {k: tuple(v.shape) for k, v in tensors.items()} })")


def _digest(tensors: Dict[str, torch.Tensor], fields: Dict[str, str]) -> str:
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(str(tuple(tensors[name].shape)).encode())
        h.update(tensors[name].numpy().tobytes())
    return h.hexdigest()


def check_model(enrollment: Enrollment, model: Any) -> None:
    """Refuse a model whose embedding function differs from the one enrolled on."""
    if model.fingerprint(enrollment.modality) != enrollment.fingerprint:
        ours = model.fingerprint(enrollment.modality)[:12]
        raise ModelLoadError(f"this {enrollment.modality} enrollment was made with another model (fingerprint "
                             f"{enrollment.fingerprint[:12]}, this model's {ours}): enroll the source again with it")


def _checked(embeddings: torch.Tensor, what: str) -> torch.Tensor:
    """(N, D) float64 embeddings, with one clear error for too few or non-finite ones."""
    z = torch.as_tensor(embeddings).double()
    if z.ndim != 2 or len(z) < MIN_SAMPLES:
        raise BinderInputError(f"{what}: expected at least {MIN_SAMPLES} embeddings (N, D), got shape {tuple(z.shape)}")
    if not torch.isfinite(z).all():
        raise BinderInputError(f"{what}: the embeddings hold NaN or infinite values")
    return z


def _shrunk_covariance(z: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """(D, D) covariance of (N, D) samples, shrunk towards ``trace / D * I`` by ``shrinkage``."""
    c = torch.cov(z.T)  # (D, D)
    return (1 - shrinkage) * c + shrinkage * torch.trace(c) / len(c) * torch.eye(len(c), dtype=c.dtype)


def _power(c: torch.Tensor, exponent: float) -> torch.Tensor:
    """A symmetric positive (semi-)definite matrix to a real power (eigenvalues floored)."""
    w, v = torch.linalg.eigh(c)
    w = w.clamp_min(float(w.max()) * 1e-10 + 1e-300)
    return (v * w ** exponent) @ v.T


def coral_matrix(source: torch.Tensor, reference: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """CORAL's ``C_source^-1/2 C_reference^1/2`` (D, D) of (N, D) and (M, D) samples."""
    return _power(_shrunk_covariance(source, shrinkage), -0.5) @ _power(_shrunk_covariance(reference, shrinkage), 0.5)


def check_settings(align: str, shrinkage: float, has_reference: bool) -> None:
    """One clear error for an unknown ``align``, a ``shrinkage`` outside (0, 1], or CORAL without
    a reference."""
    if align not in ALIGNS:
        raise BinderInputError(f"enrollment: align must be one of {list(ALIGNS)}, got {align!r}")
    if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0.0 < shrinkage <= 1.0:
        raise BinderInputError(f"enrollment: shrinkage must be a number in (0, 1], got {shrinkage!r}")
    if align == "coral" and not has_reference:
        raise BinderInputError("enrollment: align='coral' needs reference samples (of the sources the model was "
                               "trained on) to take the covariance from")


def from_embeddings(modality: str, source: torch.Tensor, fingerprint: str, reference: Optional[torch.Tensor] = None,
                    align: str = "mean", shrinkage: float = 0.5) -> Enrollment:
    """An :class:`Enrollment` from a source's (N, D) embeddings (and a reference's (M, D))."""
    check_settings(align, shrinkage, reference is not None)
    src = _checked(source, f"enrollment of {modality}")
    ref = None if reference is None else _checked(reference, f"enrollment of {modality}: reference")
    if ref is not None and ref.shape[1] != src.shape[1]:
        raise BinderInputError(f"enrollment of {modality}: reference embeddings of width {ref.shape[1]}, "
                               f"source embeddings of width {src.shape[1]}")
    if align == "coral" and len(src) < CORAL_ADVISED:
        log.warning("enrollment of %s: align='coral' from %d samples; a covariance from fewer than %d estimates "
                    "the source poorly (align='mean' did better with so few on FSDD's speakers)", modality, len(src),
                    CORAL_ADVISED)
    matrix = coral_matrix(src, ref, float(shrinkage)).float() if align == "coral" else None
    return Enrollment(modality, src.mean(0).float(), fingerprint, len(src),
                      None if ref is None else ref.mean(0).float(), matrix, 0 if ref is None else len(ref), align)


def enroll(model: Any, *, reference: Any = None, align: str = "mean", shrinkage: float = 0.5, batch_size: int = 32,
           sample_rate: Optional[float] = None, **inputs: Any) -> Enrollment:
    """Enroll one source from unlabelled samples: ``binder.enroll(model, audio=[clips of one speaker])``.

    Args:
        model: The model whose embeddings to correct.
        reference: Samples of the sources the model was trained on (same modality): their mean is
            added back; ``align="coral"`` also takes their covariance (then required).
        align: ``mean`` (the source's mean removed) or ``coral`` (its covariance aligned too).
        shrinkage: CORAL's weight of the scaled identity in each covariance, in (0, 1].
        batch_size, sample_rate: As :meth:`BindModel.embed`.
        **inputs: Exactly one ``modality=`` list of at least two samples of the source.

    Raises:
        BinderInputError: no or several modalities, a modality the model lacks, too few samples,
            ``coral`` without a reference, a bad sample (named by :meth:`BindModel.embed`).
    """
    if len(inputs) != 1:
        raise BinderInputError(f"enroll() takes exactly one modality=samples, got {sorted(inputs) or 'none'}")
    (key, samples), = inputs.items()
    modality = modality_name(key)
    fingerprint = model.fingerprint(modality)  # an unknown modality fails here, before any embedding
    check_settings(align, shrinkage, reference is not None)  # before any embedding
    for name, items in (("samples", samples), ("reference", reference)):
        if items is not None and (not isinstance(items, list) or len(items) < MIN_SAMPLES):
            what = f"a list of {len(items)}" if isinstance(items, list) else f"one {type(items).__name__}"
            raise BinderInputError(f"enroll(): {modality} {name} must be a list of at least {MIN_SAMPLES} inputs "
                                   f"(one source's samples), got {what}")
    embed = dict(batch_size=batch_size, sample_rate=sample_rate, progress=False)
    source = model.embed(**embed, **{modality: samples})[modality]
    ref = None if reference is None else model.embed(**embed, **{modality: reference})[modality]
    out = from_embeddings(modality, source, fingerprint, ref, align, shrinkage)
    log.info("enrolled a %s source from %d samples (%s%s)", modality, out.n, align,
             f", reference {out.reference_n}" if ref is not None else "")
    return out
