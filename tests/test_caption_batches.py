"""The digits anchor's batched training data (binder.datasets.caption_batches) and its compact
vocabulary (binder.recipes.digits_anchor.CompactVocabulary)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from binder.datasets.caption_batches import (
    CaptionBatches,
    DigitsCaptionDataModule,
    Jitter,
    canvas_singles,
    pair_labels,
    random_affine,
)
from binder.datasets.composites import label_digits
from binder.types import IMAGE, TEXT

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _data(n: int = 40, composites: int = 24, jitter: Jitter = None, seed: int = 0, batch: int = 16) -> CaptionBatches:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    # caption tokens encode what they name: singles (template, class) -> [t, c]; pairs -> [t, a, b]
    caps = torch.tensor([[[t, c, -1] for c in range(10)] for t in range(3)])  # (T, 10, L)
    pairs = torch.tensor([[[[t, a, b] for b in range(10)] for a in range(10)] for t in range(2)])  # (T', 10, 10, L)
    return CaptionBatches(images, labels, caps, pairs, MEAN, STD, batch, composites, jitter, seed)


def test_batches_shapes_labels_and_captions_agree():
    data = _data()
    batches = list(data)
    assert len(batches) == len(data) == (40 + 24) // 16
    digits = label_digits()
    seen_pairs = 0
    for batch in batches:
        assert batch[IMAGE].shape == (16, 3, 28, 56) and torch.isfinite(batch[IMAGE]).all()
        for label, text in zip(batch["label"].tolist(), batch[TEXT].tolist()):
            if text[2] < 0:  # a single digit: its caption names its class
                assert label == text[1]
            else:  # a composite: the caption names both digits, the label is their unordered pair
                seen_pairs += 1
                assert label == int(pair_labels()[text[1], text[2]])
                assert digits[label, text[1]] == 1 and digits[label, text[2]] == 1
    assert seen_pairs == sum(int((b["label"] >= 10).sum()) for b in batches) > 0


def test_without_jitter_singles_match_open_clip_longest_transform():
    open_clip = pytest.importorskip("open_clip")
    from binder.anchor import register_open_clip_configs

    register_open_clip_configs()
    clip, _, preprocess = open_clip.create_model_and_transforms("binder-digits", pretrained=None,
                                                                image_resize_mode="longest")
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    cfg = open_clip.get_model_preprocess_cfg(clip)
    ours = canvas_singles(images, cfg["mean"], cfg["std"])
    ref = torch.stack([preprocess(Image.fromarray(im, mode="L")) for im in images])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_composites_are_two_distinct_instances_side_by_side():
    data = _data(n=12, composites=64, batch=76)
    gen = torch.Generator().manual_seed(0)
    first = torch.arange(12).repeat(2)[:10]
    second = (first + 1) % 12
    batch = data.batch(first, second, gen)
    left = batch[IMAGE][:, 0, :, :28] * STD[0] + MEAN[0]
    right = batch[IMAGE][:, 0, :, 28:] * STD[0] + MEAN[0]
    torch.testing.assert_close(left, data.digits[first], atol=1e-5, rtol=0)
    torch.testing.assert_close(right, data.digits[second], atol=1e-5, rtol=0)
    plan = list(iter(_data(n=12, composites=64, batch=76)))[0]
    assert (plan["label"] >= 10).sum() == 64


def test_epochs_differ_and_seeds_repeat():
    a, b = _data(jitter=Jitter(), seed=3), _data(jitter=Jitter(), seed=3)
    first_a, first_b = next(iter(a)), next(iter(b))
    torch.testing.assert_close(first_a[IMAGE], first_b[IMAGE])
    second_a = next(iter(a))  # the next epoch draws a new plan and new jitter
    assert not torch.equal(first_a[IMAGE], second_a[IMAGE])


def test_jitter_moves_digits_but_keeps_their_ink():
    digit = torch.zeros(1, 28, 28)
    digit[0, 10:18, 12:16] = 1.0
    gen = torch.Generator().manual_seed(0)
    moved = random_affine(digit.repeat(8, 1, 1), Jitter(rotate=10, translate=0.08, scale=0.1), gen)
    assert moved.shape == (8, 28, 28)
    assert not torch.allclose(moved, digit.expand(8, -1, -1))
    ink = moved.sum(dim=(1, 2))
    assert ((ink > 0.7 * digit.sum()) & (ink < 1.3 * digit.sum())).all()
    still = random_affine(digit, Jitter(0, 0, 0), gen)
    torch.testing.assert_close(still, digit, atol=1e-5, rtol=0)


def test_a_canvas_of_another_size_is_refused():
    class World:  # only the size check runs before setup
        pass

    with pytest.raises(ValueError, match="28 x 56"):
        DigitsCaptionDataModule(World(), None, {"mean": MEAN, "std": STD, "size": [32, 32]}, 8)


def test_compact_vocabulary_embeds_as_the_full_table_and_writes_back():
    open_clip = pytest.importorskip("open_clip")
    from binder.anchor import register_open_clip_configs
    from binder.recipes.digits_anchor import CompactVocabulary

    register_open_clip_configs()
    torch.manual_seed(0)
    clip = open_clip.create_model("binder-digits", pretrained=None).eval()
    tokens = open_clip.get_tokenizer("binder-digits")(["a handwritten seven.", "the digits 3 and 7."])
    with torch.no_grad():
        before = clip.encode_text(tokens)
    full = clip.token_embedding
    vocab = CompactVocabulary(clip, tokens.flatten())
    assert clip.token_embedding.num_embeddings == len(torch.unique(tokens)) < full.num_embeddings
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_text(vocab.tokens(tokens)), before)
        clip.token_embedding.weight.add_(1.0)  # what training would change
    untouched = full.weight[1000].clone()
    vocab.restore(clip)
    assert clip.token_embedding is full
    torch.testing.assert_close(full.weight[tokens[0, 1]], vocab.compact.weight[vocab.remap[tokens[0, 1]]])
    torch.testing.assert_close(full.weight[1000], untouched)
    with pytest.raises(ValueError, match="training vocabulary"):
        vocab.tokens(torch.tensor([[49406, 1000, 49407]]))
