"""binder eval against ImageBind's own code: on an ImageBind-format checkpoint with random weights
built by the reference constructor (test_imagebind.py) and a generated ESC-50 layout, every item's
top-5 classes and scores from ``binder.evaluate`` equal those of the reference model fed by the
reference loaders (``imagebind/data.py``: ``load_and_transform_audio_data`` and
``load_and_transform_text``) with the same templates, prompt-ensembled as CLIP does."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import binder
import test_imagebind
import test_imagebind_fidelity
from eval_layouts import write_esc50

# ImageBind's reference model at reduced size, its checkpoint loaded by binder, and its loaders:
# the fixtures of the equivalence tests, used here under the same names.
reference, checkpoint, model = test_imagebind.reference, test_imagebind.checkpoint, test_imagebind.model
ref_data = test_imagebind_fidelity.ref_data

TEMPLATES = ["a sound of a {}.", "a photo of the {}.", "{}"]


@torch.no_grad()
def reference_predictions(reference, ref_data, root, classnames):
    """(file name, top-5 class names, their scores) per recording, all through ImageBind's code."""
    with open(root / "meta" / "esc50.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_class = []
    for name in classnames:
        tokens = ref_data.load_and_transform_text([t.format(name) for t in TEMPLATES], "cpu")
        text = F.normalize(reference({"text": tokens})["text"], dim=-1)
        per_class.append(F.normalize(text.mean(0), dim=-1))
    classes = torch.stack(per_class)  # (C, D)
    out = []
    for row in rows:
        audio = ref_data.load_and_transform_audio_data([str(root / "audio" / row["filename"])], "cpu")
        z = F.normalize(reference({"audio": audio})["audio"], dim=-1)  # (1, D)
        scores = (z @ classes.T)[0]
        order = torch.argsort(scores, descending=True)[:5]
        out.append((row["filename"], [classnames[i] for i in order], [float(scores[i]) for i in order]))
    return out


def test_per_item_predictions_equal_the_reference(reference, ref_data, model, tmp_path):
    info = write_esc50(tmp_path / "ESC-50", per_fold=3, seconds=2.6)
    result = binder.evaluate(model, "esc50", info["root"], templates=TEMPLATES, cache=False, progress=False)
    theirs = reference_predictions(reference, ref_data, info["root"], info["classnames"])
    ours = {r["id"]: r for r in result.predictions}
    assert len(ours) == len(theirs) == info["n"]
    for name, top, scores in theirs:
        mine = ours[name]
        assert np.allclose(mine["top5_scores"], scores, atol=2e-4), (name, mine["top5_scores"], scores)
        gaps = np.diff(scores)
        if np.all(np.abs(gaps) > 1e-3):  # no near-tie: the ranking must be identical
            assert mine["top5"] == top, name
        else:
            assert mine["top5"][0] == top[0] or abs(scores[0] - scores[1]) <= 1e-3
    ref_acc = 100 * np.mean([top[0] == next(r["true"][0] for r in result.predictions if r["id"] == n)
                             for n, top, _ in theirs])
    per_fold = result.record["binder"]["details"]["per_group"]
    assert np.mean([f["acc1"] for f in per_fold.values()]) == pytest.approx(result.metrics["acc1"])
    assert ref_acc == pytest.approx(100 * np.mean([r["correct"] for r in result.predictions]))
