"""Search by any modality the model holds: a depth index and a plugin's tactile index, queried from
Python, the command line and the page, with nothing in binder naming depth or tactile."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

import binder
from binder.cli import main
from binder.index import Index
from binder.server import create_app

SMALL = {"encoder": {"depth": 1, "width": 32, "heads": 2}}


def maps(folder, names, scale: float, seed: int = 0) -> list:
    """Distinct smooth 2-D maps saved as .npy (depth in metres, or pressure in kPa)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        blobs = np.asarray(Image.fromarray(rng.integers(0, 255, (4, 4), dtype=np.uint8)).resize((32, 32)))
        np.save(folder / name, (0.5 + scale * blobs / 255.0).astype(np.float32))
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module", params=["depth", "tactile"])
def setup(request, random_anchor, tmp_path_factory):
    modality = request.param
    if modality not in binder.list_modalities():
        pytest.skip(f"{modality} is not registered (the example plugin is not installed)")
    root = tmp_path_factory.mktemp(modality)
    model = binder.create_model("bind", anchor=random_anchor, modalities={modality: SMALL}).eval()
    files = maps(root / "items", [f"m{i}.npy" for i in range(8)], scale=3.0 if modality == "depth" else 60.0)
    model_dir = binder.save(model, root / "model")
    index = Index.build(model, files, modality, root / "idx", num_workers=0, progress=False)
    return modality, model_dir, index, files


def test_python_searches_by_the_modality(setup):
    modality, _, index, files = setup
    hits = index.search(**{modality: str(files[3])}, k=3)
    assert hits[0].path == str(files[3]) and len(hits) == 3
    assert len(index.search(**{modality: str(files[3])}, text="a photo", weights=[0.9, 0.1], k=2)) == 2


def test_the_command_line_takes_the_modality_as_an_option(setup, capsys):
    modality, model_dir, index, files = setup
    status = main(["search", str(index.path), "--model", str(model_dir), f"--{modality}", str(files[5]), "-k", "2",
                   "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["hits"][0]["path"] == str(files[5]) and list(out["query"]) == [modality]


def test_the_page_offers_the_modality_and_answers_it(setup):
    modality, model_dir, index, files = setup
    page_index = Index.open(index.path, binder.load(model_dir))
    with TestClient(create_app(page_index)) as client:
        form = client.get("/").text
        assert f'id="{modality}"' in form and f'id="weight_{modality}"' in form and ".npy" in form
        with open(files[2], "rb") as f:
            r = client.post("/api/search", files={modality: (files[2].name, f, "application/octet-stream")},
                            data={"k": "3"})
        assert r.status_code == 200 and r.json()["hits"][0]["path"] == str(files[2])
