"""Property-based tests (Hypothesis): whatever a user passes, binder answers with one of its own
errors or with finite, unit-norm embeddings, never another exception, never NaN, never a hang.

Every registered modality's preprocessor (plugins included) gets random arrays of random shapes,
dtypes and values (NaN, inf, huge, empty, zero-sized), with and without random rates; the
anchor's image and text paths get random arrays and items; ``binder.load`` gets random
``config.json`` documents.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import binder
from binder.errors import BinderError
from binder.model import BindModel
from helpers import SMALL_ENCODER

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

MODALITIES = binder.list_modalities()
EXAMPLES = int(os.environ.get("BINDER_HYPOTHESIS_EXAMPLES", "60"))  # a longer local run: set it higher
PROFILE = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECONDS_PER_INPUT = 20  # a hang is a failure


@contextmanager
def time_limit(seconds: int):
    """Raise TimeoutError if the block runs longer than ``seconds`` (SIGALRM; main thread)."""
    def expire(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def model(random_anchor) -> BindModel:
    torch.manual_seed(0)
    return BindModel(random_anchor, {m: {"encoder": SMALL_ENCODER} for m in MODALITIES}).eval()


def check_embedding(model: BindModel, modality: str, item, sample_rate=None) -> None:
    """The contract: a binder error, or finite unit-norm embeddings."""
    try:
        with time_limit(SECONDS_PER_INPUT):
            z = model.embed(**{modality: [item]}, sample_rate=sample_rate, progress=False)[modality]
    except BinderError:
        return
    assert z.shape == (1, model.anchor.embed_dim)
    assert torch.isfinite(z).all()
    assert abs(float(z.norm()) - 1.0) < 1e-4


# ----------------------------------------------------------------------------------------------
# Arrays of any shape, dtype and value through every modality
# ----------------------------------------------------------------------------------------------

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int16, np.int32, np.uint8, np.uint16, np.bool_,
                          np.complex64])
SPECIAL = st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e30, -1e30, float(np.finfo(np.float32).max), float("nan"),
                           float("inf"), -float("inf"), 1e-30])


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40))
    if math.prod(shape) > 20_000:
        shape = shape[:2]
    if dtype.kind in "fc":
        fill = draw(SPECIAL)
        x = np.full(shape, fill, dtype=dtype) if draw(st.booleans()) else \
            np.random.default_rng(draw(st.integers(0, 2**32 - 1))).normal(0, draw(st.sampled_from([1e-3, 1, 1e4])),
                                                                          shape).astype(dtype)
        if x.size and draw(st.booleans()):
            x.flat[draw(st.integers(0, x.size - 1))] = fill
        return x
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is None:
        return np.random.default_rng(0).integers(0, 2, shape).astype(dtype)
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(info.min, info.max, shape, dtype=dtype,
                                                                            endpoint=True)


def _tensor_or_array(x: np.ndarray):
    """``x`` as a torch tensor where torch has its dtype, else the array itself."""
    try:
        return torch.from_numpy(x)
    except TypeError:
        return x


RATES = st.one_of(st.none(), st.sampled_from([1, 8000, 16000, 44100, 100, 4.0, 29.97, 0, -5, float("nan"), float("inf"),
                                                1e9, 0.001]), st.text(max_size=3))


@pytest.mark.parametrize("modality", MODALITIES)
@PROFILE
@given(x=arrays(), rate=RATES, as_tensor=st.booleans(), as_pair=st.booleans())
def test_any_array_gives_an_error_or_an_embedding(model, modality, x, rate, as_tensor, as_pair):
    item = _tensor_or_array(x) if as_tensor else x
    if as_pair:
        check_embedding(model, modality, (item, rate))
    else:
        check_embedding(model, modality, item, sample_rate=rate if not isinstance(rate, str) else None)


@pytest.mark.parametrize("modality", MODALITIES)
@PROFILE
@given(scale=st.sampled_from([1e-30, 1e-8, 1.0, 1e3, 1e8, 1e15, 1e30, float(np.finfo(np.float32).max)]),
       seed=st.integers(0, 1000))
def test_the_example_input_scaled_to_extremes(model, modality, scale, seed):
    """A valid input of each modality, scaled from tiny to float32's largest value."""
    example = binder.get_modality(modality).example_input()
    x, rate = example if isinstance(example, tuple) else (example, None)
    x = np.asarray(x)
    if x.dtype.kind == "f":
        noisy = x + np.random.default_rng(seed).normal(0, 0.01, x.shape).astype(x.dtype)
        with np.errstate(over="ignore"):
            x = (noisy.astype(np.float64) * scale).astype(x.dtype)
    check_embedding(model, modality, (x, rate) if rate is not None else x)


# ----------------------------------------------------------------------------------------------
# The anchor's paths
# ----------------------------------------------------------------------------------------------

@PROFILE
@given(x=arrays())
def test_any_image_array(model, x):
    check_embedding(model, "image", x)
    check_embedding(model, "image", _tensor_or_array(x))


@PROFILE
@given(items=st.lists(st.one_of(st.text(max_size=300), st.none(), st.integers(), st.floats(), st.binary(max_size=8)),
                      min_size=0, max_size=5))
def test_any_text_items(model, items):
    try:
        with time_limit(SECONDS_PER_INPUT):
            z = model.embed(text=items, progress=False)["text"]
    except BinderError:
        assert not items or not all(isinstance(t, str) for t in items)
        return
    assert all(isinstance(t, str) for t in items) and z.shape == (len(items), model.anchor.embed_dim)
    assert torch.isfinite(z).all() and torch.allclose(z.norm(dim=-1), torch.ones(len(items)), atol=1e-4)


# ----------------------------------------------------------------------------------------------
# binder.load on random config.json documents
# ----------------------------------------------------------------------------------------------

JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                              st.text(max_size=12)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner,
                                                                                          max_size=4)),
                    max_leaves=12)


@pytest.fixture(scope="module")
def saved(random_anchor, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    small = BindModel(random_anchor, {"audio": {"encoder": SMALL_ENCODER}, "imu": {"encoder": SMALL_ENCODER}})
    return binder.save(small, tmp_path_factory.mktemp("saved") / "model")


def _paths(node, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@PROFILE
@given(data=st.data())
def test_load_any_config_edit(saved, tmp_path_factory, data):
    """One random edit anywhere in config.json (replace a value, drop a key, or the whole file):
    load gives a ModelLoadError or a working model."""
    folder = tmp_path_factory.mktemp("edit") / "model"
    shutil.copytree(saved, folder)
    config = json.loads((folder / "config.json").read_text())
    places = [p for p, _ in _paths(config) if p]
    kind = data.draw(st.sampled_from(["replace", "drop", "whole"]))
    if kind == "whole":
        config = data.draw(JSON)
    else:
        path = data.draw(st.sampled_from(places))
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        if kind == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON)
    (folder / "config.json").write_text(json.dumps(config))
    try:
        with time_limit(60):
            loaded = binder.load(folder)
    except BinderError:
        return
    z = loaded.embed(audio=[(np.sin(np.arange(8000) / 10).astype(np.float32), 16000)], progress=False)["audio"] \
        if "audio" in loaded.bound_modalities else loaded.embed(text=["a"], progress=False)["text"]
    assert torch.isfinite(z).all() and abs(float(z.norm()) - 1) < 1e-4
