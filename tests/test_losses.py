"""SymmetricInfoNCE (binding) and the multi-positive CLIP loss (anchor training)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from binder.recipes.digits_anchor import multi_positive_clip_loss
from binder.evaluation import topk_accuracy
from binder.training.losses import SymmetricInfoNCE


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def reference_infonce(x, t, temperature):
    """ImageBind eq. 1 written out with explicit sums, both directions averaged."""
    n = x.shape[0]
    sim = (x @ t.T) / temperature
    l_xt = -sum(sim[i, i] - torch.logsumexp(sim[i], 0) for i in range(n)) / n
    l_tx = -sum(sim[i, i] - torch.logsumexp(sim[:, i], 0) for i in range(n)) / n
    return l_xt, l_tx


def test_named_terms_and_values():
    x, t = unit(8, 16, seed=0), unit(8, 16, seed=1)
    terms = SymmetricInfoNCE()(x, t, 0.07, ("audio", "image"))
    assert set(terms) == {"loss/audio-image", "loss/audio->image", "loss/image->audio",
                          "acc/audio->image", "acc/image->audio"}
    l_xt, l_tx = reference_infonce(x, t, 0.07)
    torch.testing.assert_close(terms["loss/audio->image"], l_xt)
    torch.testing.assert_close(terms["loss/image->audio"], l_tx)
    torch.testing.assert_close(terms["loss/audio-image"], (l_xt + l_tx) / 2)
    hits = ((x @ t.T).argmax(1) == torch.arange(8)).float().mean()  # in-batch top-1 retrieval, by hand
    torch.testing.assert_close(terms["acc/audio->image"], hits)
    torch.testing.assert_close(terms["acc/image->audio"], ((t @ x.T).argmax(1) == torch.arange(8)).float().mean())


def test_perfect_alignment():
    x = unit(16, 32, seed=2)
    terms = SymmetricInfoNCE()(x, x.clone(), 0.05, ("audio", "image"))
    assert terms["acc/audio->image"] == 1 and terms["acc/image->audio"] == 1
    assert terms["loss/audio-image"] < 0.1
    # A shuffled target: accuracy drops, loss far above the aligned one (chance ~ log N).
    shuffled = SymmetricInfoNCE()(x, x.roll(1, 0), 0.05, ("audio", "image"))
    assert shuffled["acc/audio->image"] == 0
    assert shuffled["loss/audio-image"] > math.log(16)


def test_temperature_changes_loss():
    x, t = unit(8, 16, seed=3), unit(8, 16, seed=4)
    loss = SymmetricInfoNCE()
    a = loss(x, t, 0.05, ("a", "b"))["loss/a-b"]
    b = loss(x, t, 1.0, ("a", "b"))["loss/a-b"]
    assert not torch.isclose(a, b)
    # At a high temperature every logit is nearly equal: the loss tends to log N.
    c = loss(x, t, 1e4, ("a", "b"))["loss/a-b"]
    assert abs(c.item() - math.log(8)) < 1e-3


def test_gradient_flows_to_x_only_through_the_optimised_term():
    x = unit(6, 16, seed=5).requires_grad_(True)
    t = unit(6, 16, seed=6)
    terms = SymmetricInfoNCE()(x, t, 0.07, ("audio", "image"))
    assert terms["loss/audio-image"].requires_grad
    assert not terms["loss/audio->image"].requires_grad  # logged copies are detached
    terms["loss/audio-image"].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # A gradient step lowers the loss.
    with torch.no_grad():
        x2 = F.normalize(x - 0.1 * x.grad, dim=-1)
    after = SymmetricInfoNCE()(x2, t, 0.07, ("audio", "image"))["loss/audio-image"]
    assert after < terms["loss/audio-image"]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        SymmetricInfoNCE()(unit(4, 8), unit(5, 8), 0.07, ("a", "b"))


def test_multi_positive_equals_clip_loss_for_distinct_labels():
    img, txt = unit(8, 16, seed=7), unit(8, 16, seed=8)
    scale = torch.tensor(20.0)
    got = multi_positive_clip_loss(img, txt, torch.arange(8), scale)
    logits = scale * img @ txt.T
    target = torch.arange(8)
    want = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    torch.testing.assert_close(got, want)


def test_multi_positive_spreads_targets_over_same_label():
    img, txt = unit(6, 16, seed=9), unit(6, 16, seed=10)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    scale = torch.tensor(10.0)
    got = multi_positive_clip_loss(img, txt, labels, scale)
    logits = scale * img @ txt.T
    logp_i, logp_t = logits.log_softmax(1), logits.T.log_softmax(1)
    want_i = want_t = 0.0
    for i in range(6):
        pos = [j for j in range(6) if labels[j] == labels[i]]
        want_i += -sum(logp_i[i, j] for j in pos) / len(pos)
        want_t += -sum(logp_t[i, j] for j in pos) / len(pos)
    torch.testing.assert_close(got, (want_i + want_t) / 12)


def test_multi_positive_class_invariance():
    """Same-label pairs are not negatives: shuffling captions within a class costs nothing,
    while plain CLIP (distinct labels) is penalised for it."""
    img, txt = unit(6, 16, seed=11), unit(6, 16, seed=12)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    scale = torch.tensor(10.0)
    perm = torch.tensor([1, 0, 3, 4, 2, 5])  # moves captions only within their class
    assert torch.equal(labels[perm], labels)
    torch.testing.assert_close(multi_positive_clip_loss(img, txt[perm], labels, scale),
                               multi_positive_clip_loss(img, txt, labels, scale))
    plain = multi_positive_clip_loss(img, txt, torch.arange(6), scale)
    plain_perm = multi_positive_clip_loss(img, txt[perm], torch.arange(6), scale)
    assert not torch.isclose(plain, plain_perm)


def test_multi_positive_gradient():
    img = unit(4, 8, seed=13).requires_grad_(True)
    txt = unit(4, 8, seed=14)
    scale = torch.tensor(5.0, requires_grad=True)
    multi_positive_clip_loss(img, txt, torch.tensor([0, 1, 0, 1]), scale).backward()
    assert img.grad.abs().sum() > 0 and scale.grad is not None


def test_topk_accuracy():
    classes = torch.eye(3)
    emb = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.2, 1.0], [0.9, 0.8, 0.0], [0.0, 0.0, 1.0]])
    labels = np.array([0, 2, 1, 1])
    out = topk_accuracy(emb, labels, classes, ks=(1, 2))
    assert out["top1"] == pytest.approx(50.0)  # rows 0 and 1 right
    assert out["top2"] == pytest.approx(75.0)  # row 2 has class 1 second
    assert out["chance"] == pytest.approx(100 / 3) and out["n"] == 4
