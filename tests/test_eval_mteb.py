"""A binder model in MTEB, offline: MTEB's own evaluation of its mock image zero-shot task through
:class:`BinderEncoder`, and the encoder protocol on local audio and text inputs.

MTEB's audio tasks cannot run end to end here: their datasets hold ``datasets.Audio`` features,
which ``datasets`` encodes and decodes with torchcodec, whose native library does not load on
this machine (no FFmpeg shared libraries). The encoder is therefore fed MTEB's batch format
(``{"audio": [{"array", "sampling_rate"}]}``) directly for audio."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader


# From the repository root (on sys.path under `python -m pytest`) the top-level datasets/ folder
# steps aside for Hugging Face's `datasets`, which mteb imports (binder.layout): no workaround here.
mteb = pytest.importorskip("mteb", reason="the mteb extra is not installed: pip install 'binder-embed[mteb]'")

from binder.evaluation.mteb_encoder import BinderEncoder, model_meta  # noqa: E402


@pytest.fixture(scope="module")
def encoder(audio_model):
    return BinderEncoder("tiny-audio", model=audio_model, batch_size=4)


def batches(key, items, size=3):
    return DataLoader(items, batch_size=size, collate_fn=lambda b: {key: list(b)})


def test_model_meta(encoder, audio_model):
    meta = encoder.mteb_model_meta
    assert meta.name == "binder/tiny-audio" and meta.embed_dim == audio_model.anchor.embed_dim
    assert set(meta.modalities) == {"text", "image", "audio", "video"}
    assert meta.n_parameters == sum(p.numel() for p in audio_model.parameters())
    assert model_meta(audio_model, "org/name").name == "org/name"


def test_mteb_runs_its_image_zero_shot_task(encoder):
    from mteb.mocks.mock_tasks.zeroshot_classification import MockZeroShotClassificationTask

    result = mteb.evaluate(encoder, MockZeroShotClassificationTask(), cache=None, show_progress_bar=False)
    (task,) = result.task_results
    assert task.task_name == "MockZeroShotClassification" and 0.0 <= task.get_score() <= 1.0


def test_encoder_protocol_on_local_audio_and_text(encoder, audio_model):
    rng = np.random.default_rng(0)
    audio = [{"array": (0.2 * rng.normal(size=16000 + 800 * i)).astype(np.float32), "sampling_rate": 16000}
             for i in range(5)]
    got = encoder.encode(batches("audio", audio), task_metadata=None, hf_split="test", hf_subset="default")
    want = audio_model.embed(audio=[(a["array"], 16000) for a in audio], progress=False)["audio"].numpy()
    assert got.shape == (5, audio_model.anchor.embed_dim) and np.allclose(got, want, atol=1e-5)
    texts = ["a dog barking", "rain on a roof", "a siren"]
    got = encoder.encode(batches("text", texts), task_metadata=None, hf_split="test", hf_subset="default")
    assert np.allclose(got, audio_model.embed(text=texts, progress=False)["text"].numpy(), atol=1e-5)
    both = DataLoader(list(zip(audio[:2], texts[:2])), batch_size=2,
                      collate_fn=lambda b: {"audio": [x for x, _ in b], "text": [t for _, t in b]})
    joint = encoder.encode(both, task_metadata=None, hf_split="test", hf_subset="default")
    assert np.allclose(np.linalg.norm(joint, axis=1), 1.0, atol=1e-5)  # summed, re-normalised


def test_a_modality_the_model_lacks_is_a_clear_error(encoder):
    from binder.errors import BinderInputError

    with pytest.raises(BinderInputError, match="gives depth|none of"):
        encoder.encode(batches("depth", [np.ones((8, 8))]), task_metadata=None, hf_split="t", hf_subset="d")
    with pytest.raises(BinderInputError, match="none of"):
        encoder.encode(batches("pointcloud", [torch.zeros(3)]), task_metadata=None, hf_split="t", hf_subset="d")
