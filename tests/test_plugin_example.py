"""The example plugin (``examples/plugin_modality``, distribution ``binder-tactile``): a modality
added from outside binder through the ``binder.modalities`` entry point.

The tests skip when the plugin is not installed (``pip install -e examples/plugin_modality``),
unless ``$BINDER_REQUIRE_PLUGIN`` is set (CI installs the plugin): then they fail. Once installed,
the generic per-modality tests of ``test_modalities.py`` cover ``tactile`` too.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import binder
from binder.errors import BinderConfigError, BinderInputError
from binder.training import train

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO_ROOT / "examples" / "plugin_modality"
REQUIRE_ENV = "BINDER_REQUIRE_PLUGIN"
INSTALL = f"pip install -e {PLUGIN_DIR.relative_to(REPO_ROOT)}"
CLASSNAMES = "[zero,one,two,three,four,five,six,seven,eight,nine]"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


PLUGIN_INSTALLED = importlib.util.find_spec("binder_tactile") is not None
MISSING = f"the example plugin binder_tactile is not installed: {INSTALL}"
if not PLUGIN_INSTALLED and not _required():
    pytest.skip(MISSING, allow_module_level=True)


@pytest.fixture(scope="session", autouse=True)
def plugin() -> ModuleType:
    """``binder_tactile.tactile``, imported by binder's entry-point discovery; without the plugin
    (and ``$BINDER_REQUIRE_PLUGIN`` set, else the module is skipped) every test fails here,
    before any expensive fixture."""
    if not PLUGIN_INSTALLED:
        pytest.fail(f"{MISSING} ({REQUIRE_ENV} is set)", pytrace=False)
    binder.list_modalities()  # entry-point discovery imports the plugin
    return sys.modules["binder_tactile.tactile"]


def _make_pairs() -> ModuleType:
    """``examples/plugin_modality/make_pairs.py`` as a module (a script, not in the package)."""
    spec = importlib.util.spec_from_file_location("make_pairs", PLUGIN_DIR / "make_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------
# Discovery and configuration
# ----------------------------------------------------------------------------------------------

def test_discovered_through_the_entry_point(plugin):
    (ep,) = [ep for ep in entry_points(group="binder.modalities") if ep.name == "tactile"]
    assert ep.value == "binder_tactile.tactile" and ep.dist.name == "binder-tactile"
    assert "tactile" in binder.list_modalities()
    spec = binder.get_modality("tactile")
    for obj in (spec.config_cls, spec.preprocessor_cls, spec.encoder_cls, spec.augment_cls):
        assert obj.__module__ == "binder_tactile.tactile"
    module_file = Path(plugin.__file__).resolve()
    for package in (binder, importlib.import_module("binder.modalities")):
        for folder in package.__path__:
            assert not module_file.is_relative_to(Path(folder).resolve())
    assert Path(spec.config_file).resolve() == module_file.with_name("tactile.yaml")
    from binder.datasets.sources import digits_source

    assert digits_source("tactile").render.__module__ == "binder_tactile.digits"  # its test data, apart
    # A fresh interpreter finds it by itself: binder imports the module, nobody else does.
    code = "import sys, binder; print('tactile' in binder.list_modalities(), 'binder_tactile.tactile' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.split() == ["True", "True"]


def test_composes_with_the_plugin_yaml_and_schema(compose, tmp_path):
    from hydra.core.config_store import ConfigStore
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    from binder.training.app import _packaged_modality_yaml
    from binder.registry import build_config

    cfg = compose(["modality=tactile", f"run_dir={tmp_path}"])
    assert list(cfg.modality) == ["tactile"]
    assert build_config("tactile", cfg.modality.tactile) == binder.get_modality("tactile").config_cls()
    assert not _packaged_modality_yaml("tactile")  # binder ships no tactile.yaml: the plugin's is stored
    stored = ConfigStore.instance().repo["modality"]["tactile.yaml"]
    plugin_yaml = OmegaConf.load(binder.get_modality("tactile").config_file)
    assert (stored.package == "modality.tactile"
            and OmegaConf.to_container(stored.node) == OmegaConf.to_container(plugin_yaml))
    assert "/schema/modality/tactile@_here_" in plugin_yaml.defaults
    cfg = compose(["modality=tactile", "modality.tactile.max_pressure=250", "modality.tactile.encoder.depth=2"])
    assert cfg.modality.tactile.max_pressure == 250 and cfg.modality.tactile.encoder.depth == 2
    for bad in ("modality.tactile.no_such_key=1", "modality.tactile.max_pressure=high",
                "modality.tactile.encoder.no_such_key=1"):
        with pytest.raises(ConfigCompositionException):
            compose(["modality=tactile", bad])
    with pytest.raises(BinderConfigError, match="unit"):
        build_config("tactile", {"unit": "bar"})


# ----------------------------------------------------------------------------------------------
# Preprocessing and the renderer
# ----------------------------------------------------------------------------------------------

def test_inputs_files_arrays_tensors_and_units(plugin, tmp_path):
    pre = plugin.TactilePreprocessor(plugin.TactileConfig())
    kpa = plugin.example_input()  # (20, 24) kPa
    np.save(tmp_path / "map.npy", kpa)
    np.savetxt(tmp_path / "map.csv", kpa, delimiter=",", header="pressure in kPa")
    ref = pre(kpa)
    assert ref.shape == (1, 1, 32, 32) and ref.dtype == torch.float32 and torch.isfinite(ref).all()
    for item in (tmp_path / "map.npy", str(tmp_path / "map.csv"), torch.from_numpy(kpa), kpa.astype(np.float64)[None]):
        torch.testing.assert_close(pre(item), ref)
    pascal = plugin.TactilePreprocessor(plugin.TactileConfig(unit="Pa"))
    torch.testing.assert_close(pascal(kpa * 1000.0), ref)
    zero = (0.0 - pre.cfg.mean) / pre.cfg.std
    assert torch.allclose(ref[..., 0, :], torch.tensor(zero))  # padding to a square reads no contact
    assert pre(np.full((8, 8), 1e4, np.float32)).max() == pytest.approx((1.0 - pre.cfg.mean) / pre.cfg.std)  # saturates
    noisy = kpa - 0.3
    with pytest.raises(BinderInputError, match="negative pressure"):
        pre(noisy)
    tolerant = plugin.TactilePreprocessor(plugin.TactileConfig(negative_tolerance=0.5))
    assert torch.isfinite(tolerant(noisy)).all()


@pytest.mark.parametrize("preset, side", [("tiny", 32), ("small", 64)])
@torch.no_grad()
def test_presets_take_their_input(plugin, preset, side):
    cfg = plugin.TactileConfig(preset=preset, encoder={"depth": 1})
    x = plugin.TactilePreprocessor(cfg)(plugin.example_input())
    assert x.shape == (1, 1, side, side)
    encoder = plugin.TactileEncoder(cfg).eval()
    assert encoder(x).shape == (1, encoder.output_dim)


@pytest.mark.parametrize("item, match", [
    (np.full((4, 4), np.nan), "tactile input contains .* NaN"),
    (np.array([[1.0, -2.0], [0.0, 3.0]]), "tactile input has negative pressure"),
    (np.zeros((3, 8, 8)), "tactile input: expected an \\(H, W\\) map"),
    (np.zeros(16), "tactile input: expected an \\(H, W\\) map"),
    (np.zeros((0, 5)), "tactile input is empty"),
    (np.array([["a", "b"]]), "tactile input: expected real-valued"),
    ([[1.0, 2.0]], "tactile input: expected a file path, numpy array or tensor"),
])
def test_bad_arrays_are_refused(plugin, item, match):
    pre = plugin.TactilePreprocessor(plugin.TactileConfig())
    with pytest.raises(BinderInputError, match=match):
        pre(item)


def test_bad_files_are_refused(plugin, tmp_path):
    pre = plugin.TactilePreprocessor(plugin.TactileConfig())
    (tmp_path / "empty.csv").write_text("\n")
    (tmp_path / "words.csv").write_text("1,2\nthree,4\n")
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    (tmp_path / "map.png").write_bytes(b"")
    (tmp_path / "folder.npy").mkdir()
    cases = {"missing.npy": "does not exist", "folder.npy": "is a directory", "empty.csv": "is empty",
             "words.csv": "not a readable .csv", "ragged.csv": "not a readable .csv",
             "broken.npy": "not a readable .npy", "map.png": "unsupported file type .png"}
    for name, match in cases.items():
        with pytest.raises(BinderInputError, match=match) as err:
            pre(tmp_path / name)
        assert name in str(err.value)  # the error names the input


def test_render_presses_a_digit(plugin, data_root):
    from binder.datasets.mnist import load_mnist
    from binder_tactile import digits as stamp

    digits, _ = load_mnist(data_root / "mnist")
    maps = [stamp.render(digits[i], np.random.default_rng([0, i])) for i in range(20)]
    np.testing.assert_array_equal(maps[3], stamp.render(digits[3], np.random.default_rng([0, 3])))
    for m in maps:
        assert m.shape == (32, 32) and m.dtype == np.float32 and m.min() >= 0 and np.isfinite(m).all()
        force = m.sum() * (stamp.PITCH_MM * 1e-3) ** 2 * 1000.0  # kPa over the taxel areas -> newtons
        assert 2.0 < force < 17.0  # 3-15 N pressed, less what the skin spreads off the pad, plus noise
    pre = plugin.TactilePreprocessor(plugin.TactileConfig())
    x = torch.stack([pre(m) for m in maps])
    assert abs(float(x.mean())) < 0.5 and 0.5 < float(x.std()) < 2.0  # mean/std fit the renders


# ----------------------------------------------------------------------------------------------
# End to end: make_pairs -> train on the manifest -> load -> embed
# ----------------------------------------------------------------------------------------------

def test_make_pairs_train_load_embed(plugin, compose, tiny_anchor, data_root, tmp_path):
    from binder.datasets.mnist import load_mnist

    manifest = _make_pairs().write_pairs(tmp_path / "pairs", n=60, root=data_root)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and list(rows[0]) == ["image", "tactile", "label"]
    digits, labels = load_mnist(data_root / "mnist")
    assert [int(r["label"]) for r in rows] == labels[:60].tolist()
    first = np.load(manifest.parent / rows[0]["tactile"])  # the same MNIST instance renders both sides
    from binder_tactile.digits import render

    np.testing.assert_array_equal(first, render(digits[0], np.random.default_rng([0, 0])))

    run_dir = tmp_path / "run"
    cfg = compose([
        "modality=tactile", "data=manifest", f"data.path={manifest}", "data.num_workers=0", "data.batch_size=16",
        "data.val_fraction=0.2", f"data.classnames={CLASSNAMES}", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "modality.tactile.encoder.depth=1",
        "modality.tactile.encoder.width=32", "modality.tactile.encoder.heads=2", f"run_dir={run_dir}",
    ])
    metrics = train(cfg)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    zero_shot = json.loads((run_dir / "metrics.json").read_text())["zero_shot"]
    assert zero_shot == json.loads(json.dumps(metrics["zero_shot"]))
    result = zero_shot["tactile->text (emergent)"]
    assert result["n"] == 12 and result["chance"] == pytest.approx(10.0) and result["top1"] <= result["top5"]
    assert result["top1"] * 12 / 100 == pytest.approx(round(result["top1"] * 12 / 100))  # a count of 12 held-out maps

    model = binder.load(run_dir / "model")
    assert model.bound_modalities == ["tactile"] and model.configs["tactile"].trunk().depth == 1
    inputs = [manifest.parent / rows[i]["tactile"] for i in range(3)] + [plugin.example_input()]
    z = model.embed(tactile=inputs, progress=False)["tactile"]
    assert z.shape == (4, model.anchor.embed_dim) and torch.isfinite(z).all()
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4))
    assert not torch.allclose(z[0], z[1])
    binder.save(model, tmp_path / "resaved")
    reloaded = binder.load(tmp_path / "resaved").embed(tactile=inputs, progress=False)["tactile"]
    torch.testing.assert_close(reloaded, z, rtol=0, atol=0)  # identical before save and after load
