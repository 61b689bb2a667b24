"""binder.save / binder.load, their failure modes, and the top-level embedding API."""
from __future__ import annotations

import importlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import binder
from binder.anchor import OpenClipAnchor
from binder.errors import BinderInputError, ModelLoadError, NoDefaultModelError
from binder.model import BindModel
from binder.types import Modality
from helpers import SMALL_ENCODER, chirp

api_module = importlib.import_module("binder.api")  # where the default model lives
io_module = importlib.import_module("binder.io")


def make_model(anchor, seed: int = 0) -> BindModel:
    torch.manual_seed(seed)
    return BindModel(anchor, {"audio": {"encoder": SMALL_ENCODER, "clips_per_sample": 2}}).eval()


@pytest.fixture(scope="module")
def file_anchor(anchor_file):
    """The random anchor, loaded from a local checkpoint file (so saving bundles a copy)."""
    return OpenClipAnchor(model="binder-digits", pretrained=str(anchor_file))


@pytest.fixture(scope="module")
def model(file_anchor) -> BindModel:
    return make_model(file_anchor)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> Path:
    return binder.save(model, tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    wav = folder / "a.wav"
    sf.write(wav, chirp(1.2, 8000), 8000, subtype="FLOAT")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L")
    return {"wav": wav, "image": image, "text": ["the digit three.", "a handwritten seven."]}


def _embed_all(m, inputs):
    return m.embed(audio=[inputs["wav"], (chirp(2.5, 16000), 16000)], image=[inputs["image"]],
                   text=inputs["text"], progress=False, device="cpu")


# ----------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------

def test_saved_folder_contents(saved, anchor_file, file_anchor):
    assert saved.is_dir()
    assert (saved / "config.json").is_file() and (saved / "model.safetensors").is_file()
    # The anchor is bundled in open_clip's own folder format.
    assert (saved / "anchor" / "open_clip_config.json").is_file()
    assert load_file(str(saved / "anchor" / "open_clip_model.safetensors")).keys() == load_file(str(anchor_file)).keys()
    config = json.loads((saved / "config.json").read_text())
    assert config["format"] == "binder" and config["embed_dim"] == 128
    assert config["anchor"]["model"] == "local-dir:anchor"  # relative: the folder is portable
    assert config["anchor_fingerprint"] == file_anchor.fingerprint()
    assert {k: v for k, v in config["modalities"]["audio"]["encoder"].items() if v is not None} == SMALL_ENCODER
    assert config["modalities"]["audio"]["clips_per_sample"] == 2
    assert set(config["files"]) == {"model.safetensors", "anchor/open_clip_config.json",
                                    "anchor/open_clip_model.safetensors"}
    assert all(len(d) == 64 for d in config["files"].values())
    weights = load_file(str(saved / "model.safetensors"))
    assert weights and not any(k.startswith("anchor.") for k in weights)  # the frozen anchor is not duplicated
    assert not [p.name for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temp folders


def test_saved_files_have_normal_permissions(saved):
    umask = os.umask(0)
    os.umask(umask)
    for path in [saved, *saved.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == want, f"{path}: {oct(mode)} != {oct(want)}"


def test_bundled_anchor_loads_with_open_clip_alone(saved, file_anchor):
    """open_clip reads the bundled folder without binder (a fresh interpreter, binder not imported)."""
    code = ("import sys, open_clip, torch\n"
            "m, _, pre = open_clip.create_model_and_transforms(f'local-dir:{sys.argv[1]}')\n"
            "assert 'binder' not in sys.modules\n"
            "print(*pre.transforms[0].size, float(sum(p.double().sum() for p in m.parameters())))")
    out = subprocess.run([sys.executable, "-c", code, str(saved / "anchor")],
                         capture_output=True, text=True, check=True)
    height, width, total = out.stdout.split()
    assert (int(height), int(width)) == (28, 56)  # singles and two-digit composites
    assert float(total) == pytest.approx(float(sum(p.double().sum() for p in file_anchor.model.parameters())), rel=1e-9)


def test_round_trip_gives_identical_embeddings(model, saved, inputs, tmp_path):
    before = _embed_all(model, inputs)
    # Move the folder: the bundled anchor is found relative to it.
    moved = saved.rename(tmp_path / "moved")
    try:
        loaded = binder.load(moved)
        assert loaded.configs[Modality.AUDIO] == model.configs[Modality.AUDIO]
        after = _embed_all(loaded, inputs)
    finally:
        moved.rename(saved)
    assert set(after) == {Modality.AUDIO, Modality.IMAGE, Modality.TEXT}
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert not loaded.training


def test_round_trip_changes_with_weights(model, saved, inputs, file_anchor):
    """Guard against a vacuous round trip: a differently seeded model embeds differently."""
    other = make_model(file_anchor, seed=1)
    a = _embed_all(model, inputs)["audio"]
    b = _embed_all(other, inputs)["audio"]
    assert not torch.allclose(a, b, atol=1e-3)


def test_random_anchor_is_bundled(random_anchor, tmp_path, inputs):
    """Random weights cannot be recreated from a name: they are saved with the model."""
    model = make_model(random_anchor)
    path = binder.save(model, tmp_path / "m")
    assert (path / "anchor" / "open_clip_model.safetensors").is_file()
    loaded = binder.load(path)
    torch.testing.assert_close(_embed_all(loaded, inputs)["image"], _embed_all(model, inputs)["image"], rtol=0, atol=0)


def test_overwrite_existing_model(file_anchor, tmp_path, inputs):
    target = tmp_path / "m"
    first, second = make_model(file_anchor, 0), make_model(file_anchor, 1)
    binder.save(first, target)
    binder.save(second, target)
    got = binder.load(target).embed(audio=[inputs["wav"]], progress=False, device="cpu")["audio"]
    want = second.embed(audio=[inputs["wav"]], progress=False, device="cpu")["audio"]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no .old or temp folders left


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_save_is_atomic(file_anchor, tmp_path, monkeypatch, existing, inputs):
    target = tmp_path / "m"
    first = make_model(file_anchor, 0)
    if existing:
        binder.save(first, target)
    calls = []

    def broken_save_file(*args, **kwargs):
        calls.append(args)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(io_module, "save_file", broken_save_file)
    with pytest.raises(OSError, match="simulated"):
        binder.save(make_model(file_anchor, 1), target)
    assert calls, "the simulated failure was not hit"
    left = sorted(p.name for p in tmp_path.iterdir())
    if existing:
        assert left == ["m"]  # the old model is untouched...
        monkeypatch.undo()
        got = binder.load(target).embed(audio=[inputs["wav"]], progress=False, device="cpu")["audio"]
        want = first.embed(audio=[inputs["wav"]], progress=False, device="cpu")["audio"]
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # ...and still the first model
    else:
        assert left == []  # neither the target nor a temp folder


# ----------------------------------------------------------------------------------------------
# Load errors
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def copy_of_saved(saved, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "model"))


def _rewrite_weights(folder: Path, edit) -> None:
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_load_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        binder.load(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_load_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="folder"):
        binder.load(f)


def test_load_folder_without_config(copy_of_saved):
    (copy_of_saved / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        binder.load(copy_of_saved)


def test_load_config_not_json(copy_of_saved):
    (copy_of_saved / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError, match="not valid UTF-8 JSON"):
        binder.load(copy_of_saved)


def test_load_config_not_binder(copy_of_saved):
    (copy_of_saved / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelLoadError, match="not a binder config"):
        binder.load(copy_of_saved)


def test_load_config_unknown_modality(copy_of_saved):
    config = json.loads((copy_of_saved / "config.json").read_text())
    config["modalities"]["smell"] = config["modalities"].pop("audio")
    (copy_of_saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="smell"):
        binder.load(copy_of_saved)


def test_load_missing_weights(copy_of_saved):
    (copy_of_saved / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        binder.load(copy_of_saved)


def test_load_truncated_weights(copy_of_saved):
    w = copy_of_saved / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="SHA-256"):
        binder.load(copy_of_saved)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        binder.load(copy_of_saved, verify=False)


def test_load_corrupt_weights(copy_of_saved):
    (copy_of_saved / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        binder.load(copy_of_saved, verify=False)


def test_flipped_bytes_are_caught(copy_of_saved, inputs):
    """64 bytes changed inside the tensor data: still a valid safetensors file, but not the model."""
    w = copy_of_saved / "model.safetensors"
    data = bytearray(w.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x55 for b in data[middle : middle + 64])
    w.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.safetensors.*SHA-256"):
        binder.load(copy_of_saved)
    binder.load(copy_of_saved, verify=False)  # loads: the file itself is well-formed


def test_load_weights_missing_key(copy_of_saved):
    key = "heads.audio.weight"
    _rewrite_weights(copy_of_saved, lambda s: s.pop(key))
    with pytest.raises(ModelLoadError, match="missing") as err:
        binder.load(copy_of_saved, verify=False)
    assert key in str(err.value)


def test_load_weights_unexpected_key(copy_of_saved):
    _rewrite_weights(copy_of_saved, lambda s: s.__setitem__("encoders.audio.extra", torch.zeros(3)))
    with pytest.raises(ModelLoadError, match="unexpected"):
        binder.load(copy_of_saved, verify=False)


def test_load_weights_wrong_shape(copy_of_saved):
    key = "heads.audio.weight"
    _rewrite_weights(copy_of_saved, lambda s: s.__setitem__(key, torch.zeros(7, 5)))
    with pytest.raises(ModelLoadError, match="shape") as err:
        binder.load(copy_of_saved, verify=False)
    assert key in str(err.value)


def test_load_missing_bundled_anchor(copy_of_saved):
    import shutil

    shutil.rmtree(copy_of_saved / "anchor")
    with pytest.raises(ModelLoadError):
        binder.load(copy_of_saved)


# ----------------------------------------------------------------------------------------------
# binder.use / binder.embed
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def no_default(monkeypatch):
    monkeypatch.setattr(api_module, "_default_model", None)


def test_embed_without_use(no_default):
    with pytest.raises(NoDefaultModelError, match=r"binder\.use"):
        binder.embed(text=["a"])


def test_use_then_embed(no_default, saved, inputs, model):
    used = binder.use(saved)
    assert isinstance(used, BindModel)
    wave, rate = sf.read(inputs["wav"], dtype="float32")
    out = binder.embed(audio=[inputs["wav"], str(inputs["wav"]), (wave, rate)], image=inputs["image"],
                       text="a handwritten seven.", progress=False, device="cpu")
    for name, n in (("audio", 3), ("image", 1), ("text", 1)):
        z = out[name]  # string keys work
        assert z.dtype == torch.float32 and z.shape == (n, 128) and z.device.type == "cpu"
        torch.testing.assert_close(z.norm(dim=-1), torch.ones(n))
    # Path, string path and (array, rate) are the same recording -> the same embedding.
    torch.testing.assert_close(out["audio"][1], out["audio"][0])
    torch.testing.assert_close(out["audio"][2], out["audio"][0], atol=1e-5, rtol=0)
    # A tensor with sample_rate= gives the same embedding again.
    t = binder.embed(audio=torch.from_numpy(wave), sample_rate=rate, progress=False, device="cpu")
    torch.testing.assert_close(t["audio"][0], out["audio"][0], atol=1e-5, rtol=0)
    # And the default model embeds like the model that was saved.
    direct = model.embed(text=["a handwritten seven."], progress=False, device="cpu")
    torch.testing.assert_close(out["text"], direct["text"], atol=0, rtol=0)


def test_use_accepts_a_model_and_batches(no_default, model, inputs):
    assert binder.use(model) is model
    items = [(chirp(1.0, 16000, seed=i), 16000) for i in range(5)]
    whole = binder.embed(audio=items, progress=False, device="cpu")["audio"]
    batched = binder.embed(audio=items, batch_size=2, progress=False, device="cpu")["audio"]
    assert whole.shape == (5, 128)
    torch.testing.assert_close(batched, whole, atol=1e-5, rtol=0)


def test_use_missing_folder(no_default, tmp_path):
    with pytest.raises(ModelLoadError):
        binder.use(tmp_path / "nothing")
    with pytest.raises(NoDefaultModelError):  # a failed use() leaves no default behind
        binder.embed(text=["a"])


def test_embed_bad_inputs_name_them(no_default, model, tmp_path):
    binder.use(model)
    with pytest.raises(BinderInputError, match="missing.wav"):
        binder.embed(audio=[tmp_path / "missing.wav"], progress=False)
    with pytest.raises(BinderInputError, match="missing.png"):
        binder.embed(image=[tmp_path / "missing.png"], progress=False)
    with pytest.raises(BinderInputError, match="text input 1 is a int"):
        binder.embed(text=["a", 3], progress=False)
    with pytest.raises(BinderInputError, match="smell"):
        binder.embed(smell=["x"], progress=False)


# ----------------------------------------------------------------------------------------------
# Hugging Face conventions: save_pretrained / from_pretrained / push_to_hub, hf-hub: sources
# ----------------------------------------------------------------------------------------------

def test_load_from_hub_repository(model, saved, hub_server, inputs):
    """A saved model folder published as a Hub repository loads by ``hf-hub:org/name``."""
    hub_server.add("binder/digits-audio", "main", saved)
    for loaded in (binder.load("hf-hub:binder/digits-audio"), BindModel.from_pretrained("hf-hub:binder/digits-audio")):
        assert loaded.bound_modalities == ["audio"]
        torch.testing.assert_close(_embed_all(loaded, inputs)["audio"], _embed_all(model, inputs)["audio"],
                                   rtol=0, atol=0)
    with pytest.raises(ModelLoadError, match="not found"):
        binder.load("hf-hub:binder/missing")


def test_save_pretrained_and_push_to_hub(model, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload_folder(self, *, folder_path, repo_id, **kw):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    folder = model.save_pretrained(tmp_path / "digits-audio")
    assert (folder / "config.json").is_file() and not calls
    model.save_pretrained(tmp_path / "digits-audio", push_to_hub=True, repo_id="me/digits-audio")
    url = model.push_to_hub("me/other", private=True)
    assert url.startswith("https://huggingface.co/me/other")
    assert [c[:2] for c in calls] == [("create", "me/digits-audio"), ("upload", "me/digits-audio"),
                                      ("create", "me/other"), ("upload", "me/other")]
    assert calls[1][2] == ["anchor", "config.json", "model.safetensors"]
    assert calls[2][2]["private"] is True


def test_load_open_clip_anchor_alone(anchor_file, file_anchor):
    m = binder.load("open_clip:binder-digits", pretrained=str(anchor_file))
    assert m.modalities == ["image", "text"] and m.anchor.fingerprint() == file_anchor.fingerprint()
    m2 = binder.load(f"open_clip:binder-digits@{anchor_file}")
    assert m2.anchor.fingerprint() == file_anchor.fingerprint()
    with pytest.raises(ModelLoadError, match="no-such-clip"):
        binder.load("open_clip:no-such-clip")


# ----------------------------------------------------------------------------------------------
# merge: encoders trained separately against the same anchor become one model
# ----------------------------------------------------------------------------------------------

def test_merge_models_sharing_an_anchor(file_anchor, tmp_path, inputs):
    torch.manual_seed(1)
    audio = make_model(file_anchor)
    depth = BindModel(file_anchor, {"depth": {"encoder": SMALL_ENCODER}}).eval()
    depth_map = np.random.default_rng(0).uniform(0.5, 2.0, (40, 40)).astype(np.float32)
    merged = binder.merge(audio, binder.save(depth, tmp_path / "depth"))
    assert merged.bound_modalities == ["audio", "depth"]
    want_audio = audio.embed(audio=[inputs["wav"]], progress=False)["audio"]
    want_depth = depth.embed(depth=[depth_map], progress=False)["depth"]
    got = merged.embed(audio=[inputs["wav"]], depth=[depth_map], progress=False)
    torch.testing.assert_close(got["audio"], want_audio, rtol=0, atol=0)
    torch.testing.assert_close(got["depth"], want_depth, rtol=0, atol=0)
    again = binder.load(binder.save(merged, tmp_path / "merged"))
    torch.testing.assert_close(again.embed(depth=[depth_map], progress=False)["depth"], want_depth, rtol=0, atol=0)


def test_merge_refuses_other_anchors_and_duplicates(file_anchor, random_anchor):
    a = make_model(file_anchor)
    assert random_anchor.fingerprint() == file_anchor.fingerprint()  # the same weights, from a file
    binder.merge(a, BindModel(random_anchor, {"depth": {"encoder": SMALL_ENCODER}}))
    torch.manual_seed(5)
    other = OpenClipAnchor(model="binder-digits")  # same architecture, other weights
    with pytest.raises(BinderInputError, match="anchors differ"):
        binder.merge(a, BindModel(other, {"depth": {"encoder": SMALL_ENCODER}}))
    with pytest.raises(BinderInputError, match="audio is bound in both"):
        binder.merge(a, make_model(file_anchor, seed=3))
    with pytest.raises(BinderInputError, match="at least two"):
        binder.merge(a)


# ----------------------------------------------------------------------------------------------
# embed() leaves the model where the user put it
# ----------------------------------------------------------------------------------------------

def test_embed_does_not_move_the_model(model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("embed() moved the model")

    monkeypatch.setattr(model, "to", refuse)
    assert model.embed(text=["a"], progress=False)["text"].shape == (1, 128)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embed_runs_where_the_model_is(model):
    model.to("cuda")
    try:
        z = model.embed(text=["a"], progress=False)["text"]
        assert z.device.type == "cpu" and next(model.parameters()).device.type == "cuda"
    finally:
        model.to("cpu")
