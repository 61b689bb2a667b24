"""Any binder model in MTEB (the ``mteb`` package: text, image, audio and video tasks, its MAEB and
MVEB benchmarks), through MTEB's encoder interface.

:class:`BinderEncoder` subclasses ``mteb.models.AbsEncoder``: ``encode(inputs, task_metadata,
hf_split, hf_subset, prompt_type)`` receives MTEB's DataLoader, whose batches are dicts keyed by
modality (``text``: strings; ``image``: PIL images or arrays; ``audio``: dicts with ``array`` and
``sampling_rate``, which MTEB's audio collator resamples; ``video``: file paths or frame arrays),
embeds each modality the batch holds with the binder model and, where one item has several
modalities (MTEB's audio-video tasks), adds their unit embeddings and re-normalises, as MTEB's own
ImageBind wrapper does. :func:`model_meta` describes the model with MTEB's ``ModelMeta`` (name,
embedding size, modalities, parameter count, cosine similarity). Install with ``pip install
'binder-embed[mteb]'``; run with ``python -m binder.evaluation.mteb_encoder MODEL TASK ...``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from binder.errors import BinderInputError, MissingDependencyError

log = logging.getLogger(__name__)

try:
    from mteb.models.abs_encoder import AbsEncoder
except ImportError as err:  # the optional extra is not installed
    raise MissingDependencyError("mteb", "binder's MTEB integration", "mteb") from err

MTEB_MODALITIES = ("text", "image", "audio", "video")


def _audio_item(item: Any) -> Any:
    """MTEB's audio item ({'array', 'sampling_rate'} or a decoded Audio feature) -> (samples, rate)."""
    if isinstance(item, dict) and "array" in item:
        return np.asarray(item["array"], dtype=np.float32), int(item["sampling_rate"])
    if hasattr(item, "get_all_samples"):  # a torchcodec AudioDecoder, as datasets decodes Audio features
        samples = item.get_all_samples()
        return samples.data.numpy().astype(np.float32), int(samples.sample_rate)
    return item


def _image_item(item: Any) -> Any:
    if isinstance(item, torch.Tensor):  # (3, H, W) float in [0, 1] or uint8
        item = item.detach().cpu()
        item = (item * 255).clamp(0, 255).to(torch.uint8) if item.is_floating_point() else item
        return item.permute(1, 2, 0).numpy()
    return item


class BinderEncoder(AbsEncoder):
    """A binder model as an MTEB encoder.

    Args:
        model_name: What :func:`binder.load` accepts (a folder, ``imagebind_huge``, ``hf-hub:...``).
        revision: Hub revision (MTEB passes it; used for ``hf-hub:`` sources).
        device: Where to run (default: cpu).
        model: An already loaded model (then ``model_name`` only names it).
        batch_size: Items per forward pass within MTEB's batches.
    """

    def __init__(self, model_name: str, revision: Optional[str] = None, device: Optional[str] = None,
                 model: Any = None, batch_size: int = 32, **kwargs: Any) -> None:
        if model is None:
            from binder.io import load

            model = load(model_name, device=device or "cpu", revision=revision)
        self.model = model.eval()
        self.batch_size = batch_size
        self.mteb_model_meta = model_meta(self.model, model_name, revision)

    def _embed(self, modality: str, items: List[Any]) -> torch.Tensor:
        if modality == "audio":
            items = [_audio_item(x) for x in items]
        elif modality == "image":
            items = [_image_item(x) for x in items]
        if modality not in self.model.modalities and modality != "video":
            raise BinderInputError(f"the MTEB task gives {modality} but this model embeds {self.model.modalities}")
        if modality == "video" and "video" not in self.model.modalities:
            from binder.evaluation.embedding import model_for

            video = model_for(self.model, "video")
            return video.embed(video=items, batch_size=self.batch_size, progress=False)["video"]
        return self.model.embed(batch_size=self.batch_size, progress=False, **{modality: items})[modality]

    def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None,
               **kwargs: Any) -> np.ndarray:
        """Embed every batch of MTEB's DataLoader -> (N, D) float32 unit vectors."""
        dataset = getattr(inputs, "dataset", None)
        features = getattr(dataset, "features", None) or {}
        if "audio" in features:
            from mteb.models.modality_collators import AudioCollator

            inputs.collate_fn = AudioCollator(target_sampling_rate=self._audio_rate())
        parts = []
        for batch in inputs:
            present = [m for m in MTEB_MODALITIES if isinstance(batch, dict) and batch.get(m) is not None
                       and len(batch[m])]
            if not present:
                raise BinderInputError(f"an MTEB batch holds none of {MTEB_MODALITIES}: keys {sorted(batch)}")
            z = sum(self._embed(m, list(batch[m])) for m in present)
            parts.append(F.normalize(z, dim=-1))
        return torch.cat(parts).float().numpy()

    def _audio_rate(self) -> int:
        cfg = getattr(self.model, "configs", {}).get("audio")
        return int(getattr(cfg, "sample_rate", 16000))


def model_meta(model: Any, name: str, revision: Optional[str] = None) -> Any:
    """MTEB's ``ModelMeta`` of a binder model."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    modalities = [m for m in MTEB_MODALITIES if m in model.modalities or (m == "video" and "image" in model.modalities)]
    described = model.anchor.describe()
    safe = name if "/" in name else f"binder/{name.rstrip('/').rsplit('/', 1)[-1] or 'model'}"
    return ModelMeta(
        loader=None, name=safe, revision=revision or "local", release_date=None, languages=["eng-Latn"],
        n_parameters=int(sum(p.numel() for p in model.parameters())), memory_usage_mb=None,
        max_tokens=int(getattr(model.anchor, "context_length", 77)), embed_dim=int(model.anchor.embed_dim),
        license=None, open_weights=True, public_training_code="binder (binder-embed)", public_training_data=None,
        framework=["PyTorch"], reference=None, similarity_fn_name=ScoringFunction.COSINE, use_instructions=False,
        training_datasets=None, modalities=modalities, extra_requirements_groups=None,
        adapted_from=str(described.get("model") or ""),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m binder.evaluation.mteb_encoder MODEL TASK [TASK ...] --output DIR``."""
    import mteb

    parser = argparse.ArgumentParser(description="Run MTEB tasks on a binder model.")
    parser.add_argument("model", help="what binder.load accepts")
    parser.add_argument("tasks", nargs="+", help="MTEB task names, e.g. ESC50_Zeroshot")
    parser.add_argument("--output", default="mteb-results", help="MTEB's result cache folder")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    encoder = BinderEncoder(args.model, device=args.device)
    results = mteb.evaluate(encoder, mteb.get_tasks(tasks=args.tasks), cache=mteb.ResultCache(args.output))
    for task in results.task_results:
        print(f"{task.task_name}: {task.get_score():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
