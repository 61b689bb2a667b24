"""ONNX export and the onnx runtime: ``binder export``, ``binder.load(dir, runtime="onnx")``.

The exported model embeds, composes, indexes and serves like the PyTorch one (cosine >= 0.9999);
int8 stays close; a folder whose files do not match its config is refused like a damaged model
folder; an encoder that cannot be traced is named; onnxruntime missing is one line."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch.nn.functional as F

import binder
from binder import BinderInputError, ModelLoadError
from binder.errors import MissingDependencyError
from binder.index import Index

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from binder.onnx.export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def model(audio_model):
    audio_model.query_spreads.update({"audio": 0.1, "text": 0.05, "image": 0.2})
    return audio_model


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "m", source="test")


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    sounds = [binder.get_modality("audio").example_input(), (rng.normal(0, 0.2, 24000).astype(np.float32), 8000)]
    images = [rng.integers(0, 255, (28, 56, 3), dtype=np.uint8), rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)]
    return {"audio": sounds, "image": images, "text": ["a photo of 3", "seven"]}


def test_export_embeds_like_pytorch(model, exported, inputs):
    config = json.loads((exported / "binder-onnx.json").read_text())
    assert sorted(config["graphs"]) == ["audio", "image", "text"] and config["quantize"] is None
    assert set(config["files"]) == {"audio.onnx", "image.onnx", "text.onnx"}
    onnx = binder.load(exported, runtime="onnx")
    assert onnx.modalities == model.modalities and onnx.bound_modalities == ["audio"]
    want, got = model.embed(progress=False, **inputs), onnx.embed(progress=False, **inputs)
    for m in want:
        assert got[m].shape == want[m].shape and (F.cosine_similarity(got[m], want[m]) >= 0.9999).all(), m
    query = {"audio": inputs["audio"][0], "text": "three"}
    assert F.cosine_similarity(onnx.compose(query), model.compose(query)).item() >= 0.9999
    assert onnx.fingerprint("audio") == model.fingerprint("audio") and onnx.query_spreads == model.query_spreads
    speaker = binder.enroll(model, audio=inputs["audio"])  # made with PyTorch, used by the ONNX runtime too
    assert F.cosine_similarity(onnx.compose(query, enrollments=[speaker]),
                               model.compose(query, enrollments=[speaker])).item() >= 0.9999


def test_an_index_built_with_pytorch_serves_the_onnx_model(model, exported, inputs, tmp_path):
    from fastapi.testclient import TestClient

    from binder.server.app import create_app

    folder = tmp_path / "sounds"
    folder.mkdir()
    import soundfile as sf

    for i, (wave, rate) in enumerate(inputs["audio"] * 3):
        sf.write(folder / f"s{i}.wav", wave * (1 + 0.1 * i), rate)
    Index.build(model, folder, "audio", tmp_path / "idx", num_workers=0, progress=False)
    onnx = binder.load(exported)  # the format is recognised: the onnx runtime
    idx = Index.open(tmp_path / "idx", onnx)
    want = Index.open(tmp_path / "idx", model).search(text="three", k=3)
    assert list(idx.search(text="three", k=3).ids) == list(want.ids)
    built = Index.build(onnx, folder, "audio", tmp_path / "idx2", num_workers=0, progress=False)
    assert len(built) == 6 and built.manifest["model"]["fingerprint"] == model.fingerprint("audio")
    client = TestClient(create_app(idx))
    answer = client.post("/api/search", data={"text": "three", "k": "2"})
    assert answer.status_code == 200 and len(answer.json()["hits"]) == 2


def test_the_cli_exports_int8_smaller_and_close(model, exported, inputs, tmp_path, capsys):
    from binder.cli import main

    folder = binder.save(model, tmp_path / "m")
    assert main(["export", str(folder), "--format", "onnx", "-o", str(tmp_path / "q"), "--quantize", "int8"]) == 0
    assert "exported image, text, audio" in capsys.readouterr().out
    onnx8 = binder.load(tmp_path / "q", runtime="onnx")
    assert onnx8.quantized == "int8"
    assert (tmp_path / "q" / "audio.onnx").stat().st_size < 0.5 * (exported / "audio.onnx").stat().st_size
    want, got = model.embed(progress=False, **inputs), onnx8.embed(progress=False, **inputs)
    for m in want:
        assert (F.cosine_similarity(got[m], want[m]) >= 0.99).all(), m
    assert main(["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "y")]) == 2
    assert "error:" in capsys.readouterr().err


def test_damaged_folders_are_refused(exported, tmp_path):
    copy = shutil.copytree(exported, tmp_path / "c")
    data = bytearray((copy / "audio.onnx").read_bytes())
    (copy / "audio.onnx").write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ModelLoadError, match="audio.onnx.* does not match the SHA-256 recorded in binder-onnx.json"):
        binder.load(copy, runtime="onnx")
    (copy / "audio.onnx").unlink()
    with pytest.raises(ModelLoadError, match="lacks 'audio.onnx', listed in binder-onnx.json"):
        binder.load(copy)
    shutil.copy(exported / "text.onnx", copy / "audio.onnx")  # another graph in its place
    with pytest.raises(ModelLoadError, match="does not match the SHA-256"):
        binder.load(copy)
    config = json.loads((copy / "binder-onnx.json").read_text())
    config["graphs"]["audio"]["file"] = "elsewhere.onnx"  # edited
    (copy / "binder-onnx.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="audio graph names no file listed"):
        binder.load(copy)
    (copy / "binder-onnx.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid UTF-8 JSON"):
        binder.load(copy)


def test_runtime_mismatch_and_missing_onnxruntime(model, exported, tmp_path, monkeypatch):
    folder = binder.save(model, tmp_path / "torch")
    with pytest.raises(ModelLoadError, match="loads into the torch runtime, not 'onnx' .*binder export"):
        binder.load(folder, runtime="onnx")
    with pytest.raises(ModelLoadError, match="loads into the onnx runtime, not 'torch'"):
        binder.load(exported, runtime="torch")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    needs = r"^ONNX export and the onnx runtime needs onnxruntime: pip install 'binder-embed\[onnx\]'$"
    with pytest.raises(MissingDependencyError, match=needs):
        binder.load(exported)


def test_an_untraceable_encoder_is_named(model, tmp_path, monkeypatch):
    encoder = model.encoders["audio"]

    def data_dependent(x):  # Python control flow on values: torch.export cannot trace it
        return x.flatten(1)[:, :128] if float(x.sum()) > 0 else -x.flatten(1)[:, :128]

    monkeypatch.setattr(encoder, "forward", data_dependent)
    with pytest.raises(BinderInputError, match=r"the audio encoder \(binder.modalities.audio.AudioEncoder\) cannot be "
                                               "exported to ONNX"):
        export_onnx(model, tmp_path / "bad", only=["audio"])
    assert not (tmp_path / "bad").exists()
