"""The shape of the library: no import circle (imports inside functions counted), the core free of
recipes and datasets, extension points checked at registration, the top-level folders never
shadowing an installed package, models made and loaded by name through the registries."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, List, Mapping, Set

import pytest
import torch

import binder
from binder.errors import BinderConfigError, BinderInputError, ModelLoadError
from binder.modality import ModalityConfig, ModalitySpec

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"binder": "binder", "modalities": "binder.modalities", "datasets": "binder.datasets"}
CORE = ("binder.errors", "binder.types", "binder.extension", "binder.files", "binder.logs", "binder.config",
        "binder.modality", "binder.registry", "binder.layers", "binder.anchor", "binder.model", "binder.embedding",
        "binder.arithmetic", "binder.io", "binder.factory", "binder.hub", "binder.download")


def modules() -> Dict[str, Path]:
    """Every module of the installed tree, by its dotted name under ``binder``."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [package, *path.relative_to(REPO / folder).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def runtime_nodes(tree: ast.AST) -> List[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never run)."""
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and
               getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
               for stmt in block.body for n in ast.walk(stmt)}
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def import_graph() -> Dict[str, Set[str]]:
    """module -> the modules it imports, at module level or inside functions alike."""
    mods = modules()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{up}.{base}" if base else up
                deps |= {owner(f"{base}.{a.name}") or owner(base) for a in node.names}
        graph[mod] = {d for d in deps if d and d != mod}
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_counting_imports_inside_functions():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_circle_check_sees_imports_inside_functions():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert circles(graph) == [["a", "b"]]
    assert "binder.io" in import_graph()["binder.api"]  # `use` imports load inside the function


def test_the_core_imports_no_recipe_dataset_or_application():
    graph = import_graph()
    outside = ("binder.recipes", "binder.datasets", "binder.training", "binder.evaluation", "binder.cli",
               "binder.server", "binder.index", "binder.imagebind", "binder.modalities")
    for mod in CORE:
        bad = sorted(d for d in graph[mod] if d.startswith(outside))
        assert not bad, f"{mod} imports {bad}"


@pytest.mark.parametrize("name", ["datasets", "modalities", "configs"])
def test_top_level_folders_step_aside_for_installed_packages(name, tmp_path):
    """From the repository root (on sys.path first), the bare name is the installed package."""
    fake = tmp_path / "site" / name
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    # -S: no site-packages, so that only these paths decide (HF datasets may be installed here)
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(tmp_path / 'site')!r}]; "
            f"import {name}; print(getattr({name}, 'REAL', False), {name}.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split()[0] == "True" and str(tmp_path) in out.stdout
    missing = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = [{str(REPO)!r}]; import {name}"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 1 and f"No module named '{name}'" in missing.stderr
    assert __import__(f"binder.{name}", fromlist=["_"]).__name__ == f"binder.{name}"  # still binder's


# ----- extension points ---------------------------------------------------------------------------

@dataclass
class GoodConfig(ModalityConfig):
    modality: ClassVar[str] = "good"
    presets: ClassVar[Mapping[str, int]] = {"tiny": 1}

    size: int = 4  # something of its own


class HeadlessEncoder(torch.nn.Module):
    output_dim, input_ndim = 8, 2

    def forward_features(self, x):
        return x

    def set_grad_checkpointing(self, enable=True):
        pass


def test_a_modality_config_shares_its_checks():
    assert GoodConfig().temperature == 0.07 and GoodConfig(preset="tiny").size == 4
    with pytest.raises(BinderConfigError, match="unknown good preset 'huge'; expected one of \\['tiny'\\]"):
        GoodConfig(preset="huge")
    for bad in (0.0, -1.0, float("nan"), "warm"):
        with pytest.raises(BinderConfigError, match="good temperature must be a number in"):
            GoodConfig(temperature=bad)


def test_a_modality_spec_names_what_its_parts_lack():
    @dataclass
    class Plain:
        temperature: float = 0.1

    with pytest.raises(BinderInputError, match="config_cls must be a dataclass subclassing .*ModalityConfig"):
        ModalitySpec("good", Plain, object, HeadlessEncoder)
    with pytest.raises(BinderInputError, match="does not implement binder.modality.Encoder: it lacks forward_head"):
        ModalitySpec("good", GoodConfig, object, HeadlessEncoder)
    with pytest.raises(BinderInputError, match="served by the anchor"):
        ModalitySpec("image", GoodConfig, object, HeadlessEncoder)


def test_every_registered_modality_meets_the_contracts():
    from binder.modality import Encoder, Preprocessor
    from binder.extension import missing_members

    for name in binder.list_modalities():
        spec = binder.get_modality(name)
        assert issubclass(spec.config_cls, ModalityConfig) and spec.config_cls.modality == name
        model = binder.create_model("bind", anchor=_tiny_anchor(), modalities={name: {"encoder": {"depth": 1}}}) \
            if name != "video" else None
        if model is not None:
            assert not missing_members(model.encoders[name], Encoder)
            assert not missing_members(model.preprocessors[name], Preprocessor)


def _tiny_anchor():
    from binder.anchor import OpenClipAnchor

    return OpenClipAnchor(model="binder-digits")


def test_models_are_made_and_listed_by_name():
    assert {"bind", "imagebind_huge"} <= set(binder.list_models())
    assert binder.list_models("image*") == ["imagebind_huge"]
    model = binder.create_model("bind", anchor="binder-digits", modalities=["audio"])
    assert model.bound_modalities == ["audio"] and model.anchor.embed_dim == 128
    with pytest.raises(ModelLoadError, match="'bind' names an architecture, not published weights"):
        binder.create_model("bind", pretrained=True)
    with pytest.raises(ModelLoadError, match="unknown model 'nope'; registered: bind, imagebind_huge"):
        binder.create_model("nope")


def test_load_resolves_names_through_the_model_registry(monkeypatch):
    from binder import factory

    calls = []
    monkeypatch.setitem(factory.MODELS._items, "imagebind_huge", lambda pretrained, **kw: calls.append(pretrained))
    binder.load("imagebind_huge")
    assert calls == [True]


def test_unknown_files_are_one_error_naming_the_formats(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="no registered format recognises this file .*binder, imagebind"):
        binder.load(tmp_path / "weights.bin")


def test_importing_binder_does_not_import_torch():
    code = "import sys, binder, binder.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ""}).stdout
    assert out.strip() == "False"


# ----- a new index engine is one module registering itself -----------------------------------------

class MemoryEngine:
    """An engine that keeps everything in a process-wide dict: enough to show that binder.Index
    builds, writes, opens and searches through the Engine protocol alone."""

    name = "memory"
    stores: Dict[str, dict] = {}

    def __init__(self, key: str, state: dict, below: int) -> None:
        self.key, self.state, self.below = key, state, below

    @classmethod
    def create(cls, folder, target, dim, kind, options):
        return cls(str(target), {"vectors": {}, "rows": {}}, 0)

    @classmethod
    def open(cls, folder, manifest, verify=True, wait=0.0):
        return cls(str(folder), cls.stores[str(folder)], manifest["next_id"])

    def follow(self, manifest):
        return MemoryEngine(self.key, self.stores[self.key], manifest["next_id"])

    def _live(self):
        return {i: v for i, v in self.state["vectors"].items() if i < self.below}

    def count(self):
        return len(self._live())

    def columns(self):
        return ["path"]

    def rows(self, ids):
        return {int(i): dict(self.state["rows"][int(i)]) for i in ids if int(i) in self._live()}

    def file_record(self, item_id):
        return None

    def missing(self, ids):
        return [int(i) for i in ids if int(i) not in self.state["vectors"]]

    def search(self, queries, k, where=None):
        import numpy as np

        ids = np.array(sorted(self._live()), dtype=np.int64)
        sims = queries @ np.stack([self.state["vectors"][i] for i in ids]).T  # (N, M)
        top = np.argsort(-sims, axis=1)[:, :k]
        return np.take_along_axis(sims, top, 1).astype(np.float32), ids[top]

    def hits(self, scores, ids):
        from types import MappingProxyType

        from binder.index.hits import hits_from_rows

        rows = {i: (r["path"], MappingProxyType({})) for i, r in self.rows(ids[ids >= 0].tolist()).items()}
        return hits_from_rows(scores, ids, rows)

    def writing(self):
        import contextlib

        return contextlib.nullcontext(self)

    def add(self, ids, vectors, rows, files=None):
        for i, v, r in zip(ids.tolist(), vectors, rows):
            self.state["vectors"][i], self.state["rows"][i] = v, dict(r)

    def delete(self, ids):
        for i in ids:
            self.state["vectors"].pop(int(i)), self.state["rows"].pop(int(i))

    def finish(self, kind):
        self.stores[self.key] = self.state
        return {"engine": self.name, "kind": "exact"}

    def published(self, manifest):
        return self.follow(manifest)

    def close(self):
        pass


def test_a_new_index_engine_is_one_registration(audio_model, tmp_path):
    import numpy as np

    from binder.index import ENGINES, EmbedReport, Index, Item

    ENGINES.register("memory", MemoryEngine)
    try:
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(6, 128)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        items = [Item(f"v{i}") for i in range(6)]
        index = Index.from_embeddings(audio_model, EmbedReport(items[:4], vectors[:4], []), "image", tmp_path / "m",
                                      engine="memory")
        assert len(index) == 4 and index.search_embeddings(vectors[2], k=1)[0][0].path == "v2"
        index.add_embeddings(EmbedReport(items[4:], vectors[4:], []))
        assert index.delete([0]) == 1
        reopened = Index.open(tmp_path / "m")
        assert len(reopened) == 5 and reopened.get(5).path == "v5"
        with pytest.raises(BinderInputError, match="does not implement Engine: it lacks"):
            ENGINES.register("broken", type("Broken", (), {"name": "broken"}))
    finally:
        ENGINES.unregister("memory")
