"""The file-loader fuzz target (tests/fuzz_targets.py) for a bounded time: every target gets
mutated inputs, and each one ends in a binder error or finite unit-norm embeddings (no other
exception, no NaN, no hang). The longer local run is recorded in docs/robustness.md."""
from __future__ import annotations

import os

import pytest

SECONDS_PER_TARGET = float(os.environ.get("BINDER_FUZZ_SECONDS", "4"))


@pytest.fixture(scope="module")
def fuzzer(random_anchor, tmp_path_factory):
    import torch

    import binder
    from fuzz_targets import Fuzzer

    work = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    small = {"encoder": {"depth": 1, "width": 32, "heads": 2}}
    model = binder.BindModel(random_anchor, {m: small for m in ("audio", "depth", "thermal", "imu", "video")}).eval()
    return Fuzzer(model, binder.save(model, work / "saved"), work, out=work / "findings", seed=1)


@pytest.mark.parametrize("target", ["audio", "image", "depth", "thermal", "imu", "video",
                                    "model-config", "model-weights"])
def test_fuzz_target(fuzzer, target):
    report = fuzzer.run(SECONDS_PER_TARGET, [target])
    assert report.inputs[target] >= 3, "too few inputs tried"
    findings = [f for f in report.findings if f["target"] == target]
    assert not findings, findings[0]["detail"]
