"""binder.hub against real HTTP servers on 127.0.0.1 (``servers``: a file server that resumes,
drops and misbehaves on request, and a fake Hugging Face Hub that ``HF_ENDPOINT`` points at)."""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants

from binder import hub
from binder.errors import ModelLoadError
from servers import FakeHub, FileServer, _file_handler, _free_port, _serve


def _body(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- file server
@pytest.fixture
def files() -> Iterator[FileServer]:
    state = FileServer()
    server, state.base = _serve(_file_handler(state))
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def registry() -> Iterator[None]:
    """Restore binder.hub's registry after the test."""
    saved = {name: hub.PRETRAINED.get(name) for name in hub.PRETRAINED.list()}
    yield
    for name in hub.PRETRAINED.list():
        hub.PRETRAINED.unregister(name)
    for name, entry in saved.items():
        hub.PRETRAINED.register(name, entry)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


# --------------------------------------------------------------------------- download
def test_download_writes_file_and_sidecar(files: FileServer, tmp_path: Path) -> None:
    body = _body(300_000)
    files.files["/w.bin"] = body
    dest = tmp_path / "sub" / "w.bin"
    assert hub.download(files.url("/w.bin"), dest, progress=False, timeout=5) == dest
    assert dest.read_bytes() == body
    assert not _part(dest).exists()
    assert _sidecar(dest).read_text().splitlines() == [f"{_sha(body)}  w.bin", f"# size: {len(body)}"]
    assert files.requests == [("/w.bin", None)]


@pytest.mark.parametrize("mode", ["eof", "reset"])
def test_interrupted_download_resumes(files: FileServer, tmp_path: Path, mode: str) -> None:
    body = _body(300_000, seed=1)
    files.files["/w.bin"] = body
    files.drop_after, files.drop_mode = 100_000, mode
    dest = tmp_path / "w.bin"
    with pytest.raises(ModelLoadError, match="is kept and rerunning the download resumes it") as info:
        hub.download(files.url("/w.bin"), dest, sha256=_sha(body), progress=False, timeout=5)
    assert files.url("/w.bin") in str(info.value) and str(_part(dest)) in str(info.value)
    assert not dest.exists()
    kept = _part(dest).stat().st_size
    assert 0 < kept <= 100_000 and _part(dest).read_bytes() == body[:kept]
    if mode == "eof":
        assert kept == 100_000

    seen = len(files.requests)
    hub.download(files.url("/w.bin"), dest, sha256=_sha(body), progress=True, timeout=5)  # bar starts at kept
    assert files.requests[seen:] == [("/w.bin", f"bytes={kept}-")]
    assert dest.read_bytes() == body and not _part(dest).exists()
    assert _sidecar(dest).read_text().startswith(_sha(body))


def test_server_ignoring_range_restarts_from_zero(files: FileServer, tmp_path: Path) -> None:
    body = _body(200_000, seed=2)
    files.files["/w.bin"] = body
    files.ignore_range = True
    dest = tmp_path / "w.bin"
    _part(dest).write_bytes(b"stale bytes " * 100)
    hub.download(files.url("/w.bin"), dest, progress=False, timeout=5)
    assert files.requests == [("/w.bin", "bytes=1200-")]
    assert dest.read_bytes() == body
    assert _sidecar(dest).read_text().startswith(_sha(body))


def test_complete_part_answered_416_is_finished(files: FileServer, tmp_path: Path) -> None:
    body = _body(50_000, seed=3)
    files.files["/w.bin"] = body
    dest = tmp_path / "w.bin"
    _part(dest).write_bytes(body)
    hub.download(files.url("/w.bin"), dest, sha256=_sha(body), progress=False, timeout=5)
    assert files.requests == [("/w.bin", f"bytes={len(body)}-")]
    assert dest.read_bytes() == body and not _part(dest).exists()


def test_oversized_part_answered_416_restarts(files: FileServer, tmp_path: Path) -> None:
    body = _body(50_000, seed=4)
    files.files["/w.bin"] = body
    dest = tmp_path / "w.bin"
    _part(dest).write_bytes(body + b"trailing junk")
    hub.download(files.url("/w.bin"), dest, progress=False, timeout=5)
    assert files.requests == [("/w.bin", f"bytes={len(body) + 13}-"), ("/w.bin", None)]
    assert dest.read_bytes() == body


def test_pinned_sha256_mismatch_leaves_nothing(files: FileServer, tmp_path: Path) -> None:
    body = _body(80_000, seed=5)
    files.files["/w.bin"] = body
    dest = tmp_path / "w.bin"
    with pytest.raises(ModelLoadError) as info:
        hub.download(files.url("/w.bin"), dest, sha256="ab" * 32, progress=False, timeout=5)
    message = str(info.value)
    assert str(dest) in message and files.url("/w.bin") in message
    assert "ab" * 32 in message and _sha(body) in message
    assert not dest.exists() and not _part(dest).exists() and not _sidecar(dest).exists()


def test_pinned_size_disagreeing_with_server(files: FileServer, tmp_path: Path) -> None:
    files.files["/w.bin"] = _body(80_000, seed=6)
    dest = tmp_path / "w.bin"
    _part(dest).write_bytes(b"x" * 10)
    with pytest.raises(ModelLoadError, match=r"reports 80000 bytes .* but 12345 bytes are expected"):
        hub.download(files.url("/w.bin"), dest, size=12_345, progress=False, timeout=5)
    assert not dest.exists() and not _part(dest).exists()


def test_cache_hit_and_corrupt_cache(files: FileServer, tmp_path: Path) -> None:
    body = _body(120_000, seed=7)
    files.files["/w.bin"] = body
    url, dest = files.url("/w.bin"), tmp_path / "w.bin"
    hub.download(url, dest, progress=False, timeout=5)
    seen = len(files.requests)
    assert hub.download(url, dest, progress=False, timeout=5) == dest
    assert hub.download(url, dest, sha256=_sha(body), size=len(body), progress=False) == dest

    raw = bytearray(body)
    raw[1000:1016] = bytes(b ^ 0xFF for b in raw[1000:1016])
    dest.write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match=r"Cached file .*w\.bin is corrupt: SHA-256 .* Delete"):
        hub.download(url, dest, progress=False, timeout=5)
    assert hub.download(url, dest, verify=False, progress=False, timeout=5) == dest
    with pytest.raises(ModelLoadError, match="expected ab"):
        hub.download(url, dest, sha256="ab" * 32, progress=False, timeout=5)

    dest.write_bytes(body[:-1])  # a wrong size is caught even without hashing
    with pytest.raises(ModelLoadError, match=f"119999 bytes, expected {len(body)}"):
        hub.download(url, dest, verify=False, progress=False, timeout=5)
    assert len(files.requests) == seen  # no cache check contacted the server


def test_cached_file_without_sidecar_is_recorded(files: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"placed by hand")
    assert hub.download(files.url("/w.bin"), dest, progress=False) == dest
    assert _sidecar(dest).read_text().startswith(_sha(b"placed by hand"))
    assert files.requests == []


def test_http_error_and_unreachable_server(files: FileServer, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"/missing\.bin failed: HTTP 404"):
        hub.download(files.url("/missing.bin"), tmp_path / "m.bin", progress=False, timeout=5)
    url = f"http://127.0.0.1:{_free_port()}/w.bin"
    with pytest.raises(ModelLoadError, match=f"Download of {re.escape(url)} failed .*nothing was written"):
        hub.download(url, tmp_path / "w.bin", progress=False, timeout=5)
    with pytest.raises(ModelLoadError, match="expected an http:// or https:// URL"):
        hub.download("ftp://example.invalid/w.bin", tmp_path / "w.bin")
    with pytest.raises(ValueError, match="64 hexadecimal"):
        hub.download(files.url("/w.bin"), tmp_path / "w.bin", sha256="abc")


def test_read_timeout_keeps_part(files: FileServer, tmp_path: Path) -> None:
    files.files["/w.bin"] = _body(1000)
    files.stall = 1.0
    dest = tmp_path / "w.bin"
    with pytest.raises(ModelLoadError, match="timed out.*is kept and rerunning"):
        hub.download(files.url("/w.bin"), dest, progress=False, timeout=0.3)
    assert _part(dest).exists() and not dest.exists()


# --------------------------------------------------------------------------- registry + cache
def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BINDER_CACHE", str(tmp_path / "env"))
    assert hub.cache_dir() == tmp_path / "env"
    assert hub.cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("BINDER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "binder"


def test_imagebind_huge_is_registered() -> None:
    entry = hub.get_pretrained("imagebind_huge")
    assert entry.url == "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
    assert (entry.filename, entry.kind, entry.size, entry.sha256) == ("imagebind_huge.pth", "imagebind", None, None)
    assert "imagebind_huge" in hub.list_pretrained()
    assert hub.url_env_var("imagebind_huge") == "BINDER_PRETRAINED_URL_IMAGEBIND_HUGE"
    with pytest.raises(ModelLoadError, match="unknown pretrained name 'nope'; registered: .*imagebind_huge"):
        hub.get_pretrained("nope")


def test_register_pretrained(registry: None) -> None:
    entry = hub.PretrainedFile("tiny", "https://example.invalid/t.zip", "t.zip", "binder", sha256="AB" * 32)
    assert entry.sha256 == "ab" * 32
    hub.register_pretrained(entry)
    hub.register_pretrained(entry)  # the same entry again is fine
    assert "tiny" in hub.list_pretrained() and hub.get_pretrained("tiny") is entry
    other = hub.PretrainedFile("tiny", "https://example.invalid/u.zip", "u.zip", "binder")
    with pytest.raises(ValueError, match="already registered"):
        hub.register_pretrained(other)
    assert hub.register_pretrained(other, replace=True) is hub.get_pretrained("tiny")
    with pytest.raises(ValueError, match="plain file name"):
        hub.PretrainedFile("bad", "https://example.invalid/x", "../x", "binder")
    with pytest.raises(ValueError, match="64 hexadecimal"):
        hub.PretrainedFile("bad", "https://example.invalid/x", "x", "binder", sha256="123")


@pytest.mark.parametrize("override", ["full", "base"])
def test_registered_name_with_url_override(files: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           override: str) -> None:
    body = _body(64_000, seed=8)
    files.files["/mirror/imagebind_huge.pth"] = body
    monkeypatch.setenv("BINDER_CACHE", str(tmp_path / "cache"))
    value = files.url("/mirror/") if override == "base" else files.url("/mirror/imagebind_huge.pth")
    monkeypatch.setenv("BINDER_PRETRAINED_URL_IMAGEBIND_HUGE", value)
    resolved = hub.resolve("imagebind_huge", progress=False)
    dest = tmp_path / "cache" / "pretrained" / "imagebind_huge.pth"
    assert resolved == hub.Resolved(kind="imagebind", path=dest, source="imagebind_huge")
    assert dest.read_bytes() == body and _sidecar(dest).read_text().startswith(_sha(body))
    assert files.requests == [("/mirror/imagebind_huge.pth", None)]
    hub.resolve("imagebind_huge", progress=False)  # cached now
    assert len(files.requests) == 1


def test_registered_entry_with_pinned_digest(files: FileServer, tmp_path: Path, registry: None) -> None:
    body = _body(10_000, seed=9)
    files.files["/t.zip"] = body
    hub.register_pretrained(hub.PretrainedFile("tiny", files.url("/t.zip"), "tiny.zip", "binder",
                                               size=len(body), sha256=_sha(body)))
    resolved = hub.resolve("tiny", cache_dir=tmp_path / "c", progress=False)
    assert resolved.kind == "binder" and resolved.path == tmp_path / "c" / "pretrained" / "tiny.zip"
    assert resolved.path.read_bytes() == body


# --------------------------------------------------------------------------- resolve
def test_resolve_url_into_downloads(files: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _body(5_000, seed=10)
    files.files["/files/model v1.bin"] = body
    monkeypatch.setenv("BINDER_CACHE", str(tmp_path / "cache"))
    url = files.url("/files/model%20v1.bin")
    resolved = hub.resolve(url, progress=False)
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    assert resolved == hub.Resolved("path", tmp_path / "cache" / "downloads" / key / "model v1.bin", url)
    assert resolved.path.read_bytes() == body


def test_resolve_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "w.pth").write_bytes(b"w")
    assert hub.resolve(tmp_path / "model") == hub.Resolved("path", tmp_path / "model", str(tmp_path / "model"))
    assert hub.resolve(str(tmp_path / "w.pth")).path == tmp_path / "w.pth"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.resolve("~/w.pth") == hub.Resolved("path", tmp_path / "w.pth", "~/w.pth")


def test_resolve_unknown_source_lists_accepted_forms(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nowhere' does not exist"):  # a path: said plainly
        hub.resolve(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError) as info:
        hub.resolve("imagebind_enormous")
    message = str(info.value)
    for form in ("existing file or folder", "registered pretrained name: ", "imagebind_huge",
                 "http:// or https:// URL", "hf-hub:org/name or hf-hub:org/name@revision"):
        assert form in message
    with pytest.raises(ModelLoadError, match="did you mean hf-hub:org/name"):
        hub.resolve("org/name")
    with pytest.raises(ValueError, match="only applies to hf-hub"):
        hub.resolve(str(tmp_path), revision="v1")


# --------------------------------------------------------------------------- fake Hugging Face Hub
@pytest.fixture
def fake_hub(hub_server: FakeHub, tmp_path: Path) -> FakeHub:
    """``org/name`` at ``main`` and ``v1`` on the local fake Hub (``$HF_ENDPOINT`` points at it)."""
    for revision, weights in (("main", b"main weights"), ("v1", b"v1 weights")):
        folder = tmp_path / "repo" / revision
        (folder / "sub").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"format": "binder", "revision": revision}))
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "sub" / "notes.txt").write_text(f"notes {revision}")
        hub_server.add("org/name", revision, folder)
    return hub_server


def _snapshot_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resolve_hf_hub_snapshot(fake_hub: FakeHub, tmp_path: Path) -> None:
    resolved = hub.resolve("hf-hub:org/name", progress=True)
    assert resolved.kind == "path" and resolved.source == "hf-hub:org/name" and resolved.path.is_dir()
    assert resolved.path.name == fake_hub.refs["org/name"]["main"]
    assert resolved.path.is_relative_to(tmp_path / "cache" / "huggingface")
    assert _snapshot_files(resolved.path) == _snapshot_files(fake_hub.trees[resolved.path.name])
    assert "GET /api/models/org/name/revision/main" in fake_hub.requests


@pytest.mark.parametrize("source, revision", [("hf-hub:org/name@v1", None), ("hf-hub:org/name", "v1")])
def test_resolve_hf_hub_revision(fake_hub: FakeHub, source: str, revision: str | None) -> None:
    resolved = hub.resolve(source, revision=revision, progress=False)
    assert resolved.path.name == fake_hub.refs["org/name"]["v1"]
    assert (resolved.path / "model.safetensors").read_bytes() == b"v1 weights"
    assert "GET /api/models/org/name/revision/v1" in fake_hub.requests


def test_resolve_hf_hub_errors(fake_hub: FakeHub) -> None:
    with pytest.raises(ModelLoadError, match="repository 'org/missing' was not found on http://127.0.0.1"):
        hub.resolve("hf-hub:org/missing", progress=False)
    with pytest.raises(ModelLoadError, match="Revision 'nope' of Hugging Face Hub repository 'org/name' was not found"):
        hub.resolve("hf-hub:org/name@nope", progress=False)
    with pytest.raises(ModelLoadError, match="Invalid Hugging Face Hub source"):
        hub.resolve("hf-hub:org/name/extra", progress=False)
    with pytest.raises(ValueError, match="disagrees"):
        hub.resolve("hf-hub:org/name@v1", revision="main")


def test_resolve_hf_hub_offline(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    online = hub.resolve("hf-hub:org/name", progress=False)
    seen = len(fake_hub.requests)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert hub.resolve("hf-hub:org/name", progress=False) == online  # served from the cache
    assert len(fake_hub.requests) == seen
    with pytest.raises(ModelLoadError, match=r"could not be reached .*no cached snapshot"):
        hub.resolve("hf-hub:org/name@v1", progress=False)


def test_resolve_hf_hub_unreachable(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(ModelLoadError, match=r"could not be reached .*no cached snapshot"):
        hub.resolve("hf-hub:org/name", progress=False)


# --------------------------------------------------------------------------- push
@pytest.fixture
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple, dict]]:
    """Replace the HfApi methods push_folder_to_hub uses with recorders (no network)."""
    calls: list[tuple[str, tuple, dict]] = []

    def recorder(name: str, result: object):
        def method(self: huggingface_hub.HfApi, *args: object, **kwargs: object) -> object:
            calls.append((name, args, {**kwargs, "api_token": self.token}))
            return result
        return method

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", recorder("create_repo", "https://hub.test/me/model"))
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", recorder("create_branch", None))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        recorder("upload_folder", SimpleNamespace(commit_url="https://hub.test/me/model/commit/abc")))
    return calls


def test_push_folder_to_hub(hub_calls: list, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    url = hub.push_folder_to_hub(tmp_path / "model", "me/model", token="tok", private=True, revision="v1",
                                 commit_message="first")
    assert url == "https://hub.test/me/model/commit/abc"
    assert hub_calls == [
        ("create_repo", ("me/model",), {"private": True, "exist_ok": True, "api_token": "tok"}),
        ("create_branch", ("me/model",), {"branch": "v1", "exist_ok": True, "api_token": "tok"}),
        ("upload_folder", (), {"repo_id": "me/model", "folder_path": tmp_path / "model", "revision": "v1",
                               "commit_message": "first", "api_token": "tok"}),
    ]


def test_push_folder_to_hub_defaults_and_errors(hub_calls: list, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    hub.push_folder_to_hub(tmp_path / "model", "me/model")
    assert [name for name, _, _ in hub_calls] == ["create_repo", "upload_folder"]
    assert hub_calls[0][2]["private"] is False
    assert hub_calls[1][2]["commit_message"] == "Upload binder model" and hub_calls[1][2]["revision"] is None
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="expected a folder .* but it is not a folder"):
        hub.push_folder_to_hub(tmp_path / "file", "me/model")
    with pytest.raises(ModelLoadError, match="but it does not exist"):
        hub.push_folder_to_hub(tmp_path / "absent", "me/model")

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise PermissionError("no write access")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", refuse)
    with pytest.raises(ModelLoadError, match="Uploading .* to Hugging Face Hub repository 'me/model' failed: "
                                             "PermissionError: no write access"):
        hub.push_folder_to_hub(tmp_path / "model", "me/model")
