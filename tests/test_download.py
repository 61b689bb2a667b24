"""binder.datasets.download against a local HTTP server serving copies of the real data."""
from __future__ import annotations

import functools
import gzip
import http.server
import io
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from binder.datasets import download as dl
from binder.datasets.fsdd import list_recordings
from binder.datasets.mnist import load_mnist

from binder.errors import BinderInputError

REPO = Path(__file__).resolve().parent.parent
PREFIX = "free-spoken-digit-dataset-master"
MNIST_NAMES = tuple(dl.MNIST_FILES)


def _shared_data() -> Path | None:
    for candidate in (os.environ.get("BINDER_DATA"), REPO / ".." / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir() and (Path(candidate) / "fsdd" / "recordings").is_dir():
            return Path(candidate).resolve()
    return None


def _write_zip(path: Path, recordings: Path, extra: dict[str, bytes], skip: str = "") -> None:
    """A GitHub-style archive of ``recordings`` plus ``extra`` members (name -> bytes)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{PREFIX}/README.md", b"FSDD\n")
        for wav in sorted(recordings.glob("*.wav")):
            if wav.name != skip:
                zf.write(wav, f"{PREFIX}/recordings/{wav.name}")
        for name, data in extra.items():
            zf.writestr(name, data)


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder served over HTTP: good and broken copies of MNIST and of the FSDD archive."""
    data = _shared_data()
    if data is None:
        pytest.skip("shared data (BINDER_DATA or ../shared/data) not available")
    www = tmp_path_factory.mktemp("www")
    recordings = data / "fsdd" / "recordings"
    some_wav = min(recordings.glob("*.wav"))
    theo = {f"{PREFIX}/recordings/0_theo_0.wav": b"RIFF not a real theo recording"}

    (www / "mnist").mkdir()
    (www / "bad-mnist").mkdir()
    for name in MNIST_NAMES:
        shutil.copyfile(data / "mnist" / name, www / "mnist" / name)
        shutil.copyfile(data / "mnist" / name, www / "bad-mnist" / name)
    # Valid gzip whose payload differs by one byte: exercises the digest check itself.
    payload = bytearray(gzip.decompress((data / "mnist" / MNIST_NAMES[1]).read_bytes()))
    payload[-1] ^= 0xFF
    (www / "bad-mnist" / MNIST_NAMES[1]).write_bytes(gzip.compress(bytes(payload), compresslevel=1))
    (www / "flipped-mnist").mkdir()
    raw = bytearray((data / "mnist" / MNIST_NAMES[0]).read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 : len(raw) // 2 + 16])
    (www / "flipped-mnist" / MNIST_NAMES[0]).write_bytes(bytes(raw))

    _write_zip(www / "master.zip", recordings, theo)
    altered = bytearray(some_wav.read_bytes())
    altered[-1] ^= 0xFF
    _write_zip(www / "altered.zip", recordings, {f"{PREFIX}/recordings/{some_wav.name}": bytes(altered)},
               skip=some_wav.name)
    _write_zip(www / "short.zip", recordings, {}, skip=some_wav.name)
    with zipfile.ZipFile(www / "evil.zip", "w") as zf:
        zf.writestr(f"{PREFIX}/recordings/0_george_0.wav", some_wav.read_bytes())
        zf.writestr(f"{PREFIX}/recordings/../../../evil.wav", b"gotcha")
    with tarfile.open(www / "evil.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("../evil.wav")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"gotcha"))
    with tarfile.open(www / "master.tar.gz", "w:gz", compresslevel=1) as tf:
        tf.add(recordings, f"{PREFIX}/recordings")
        csv = b"speaker,gender\ngeorge,m\njackson,m\nlucas,m\nnicolas,m\nyweweler,m\ntheo,m\n"
        info = tarfile.TarInfo(f"{PREFIX}/speakers.csv")
        info.size = len(csv)
        tf.addfile(info, io.BytesIO(csv))
    (www / "not-an-archive.zip").write_bytes(b"hello")
    return www


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(www: Path):
    """Base URL of a ThreadingHTTPServer on 127.0.0.1 serving ``www``; shut down afterwards."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _local_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxies, and defaults that point nowhere: no test may reach the internet."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(dl, "MNIST_MIRRORS", ("http://127.0.0.1:9/none/",))
    monkeypatch.setattr(dl, "FSDD_URL", "http://127.0.0.1:9/none.zip")


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_all_then_readers_then_noop(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    out = dl.download_all(root, mnist_base_url=f"{server}/mnist/", fsdd_url=f"{server}/master.zip")
    assert out == root
    assert _leftovers(root) == ["fsdd", "mnist"]  # no temporary files left
    assert _leftovers(root / "mnist") == sorted(MNIST_NAMES)
    images, labels = load_mnist(root / "mnist")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    recs = list_recordings(root / "fsdd")
    assert len(recs) == 2500 and {r.speaker for r in recs} == set(dl.FSDD_SPEAKERS)
    assert not (root / "fsdd" / "recordings" / "0_theo_0.wav").exists()
    assert (root / "fsdd" / "speakers.csv").read_text() == dl.FSDD_SPEAKERS_CSV

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("second call must not download anything")

    monkeypatch.setattr(dl, "_fetch", no_network)
    mtime = (root / "mnist" / MNIST_NAMES[0]).stat().st_mtime_ns
    assert dl.download_all(root, f"{server}/mnist/", f"{server}/master.zip") == root
    assert (root / "mnist" / MNIST_NAMES[0]).stat().st_mtime_ns == mtime


def test_tar_archive_and_its_speakers_table(server: str, tmp_path: Path) -> None:
    target = dl.download_fsdd(tmp_path, url=f"{server}/master.tar.gz")
    assert len(list_recordings(target)) == 2500
    table = (target / "speakers.csv").read_text().splitlines()
    assert table[0] == "speaker,gender" and len(table) == 6 and not any("theo" in line for line in table)


def test_mnist_falls_back_to_second_mirror(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "MNIST_MIRRORS", (f"{server}/missing/", f"{server}/mnist"))
    folder = dl.download_mnist(tmp_path)
    assert len(load_mnist(folder)[0]) == 10000


def test_mnist_replaces_corrupt_existing_file(server: str, tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / MNIST_NAMES[1]).write_bytes(b"garbage")
    dl.download_mnist(tmp_path, base_url=f"{server}/mnist/")
    assert len(load_mnist(tmp_path / "mnist")[1]) == 10000


def test_mnist_checksum_mismatch_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(BinderInputError) as info:
        dl.download_mnist(tmp_path, base_url=f"{server}/bad-mnist/")
    message = str(info.value)
    assert MNIST_NAMES[1] in message and dl.MNIST_FILES[MNIST_NAMES[1]] in message and "is " in message
    assert _leftovers(tmp_path) == []


def test_mnist_flipped_gzip_bytes_rejected(server: str, tmp_path: Path) -> None:
    with pytest.raises(BinderInputError, match=MNIST_NAMES[0]):
        dl.download_mnist(tmp_path, base_url=f"{server}/flipped-mnist/")
    assert _leftovers(tmp_path) == []


def test_unreachable_source_raises_connection_error(server: str, tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="404"):
        dl.download_mnist(tmp_path, base_url=f"{server}/missing/")
    with pytest.raises(ConnectionError, match="404"):
        dl.download_fsdd(tmp_path, url=f"{server}/missing.zip")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(("archive", "match"), [
    ("altered.zip", dl.FSDD_TREE_SHA256),
    ("short.zip", "2499 recordings"),
    ("not-an-archive.zip", "neither a zip nor a tar"),
])
def test_fsdd_bad_archive_leaves_nothing(server: str, tmp_path: Path, archive: str, match: str) -> None:
    with pytest.raises(BinderInputError, match=match):
        dl.download_fsdd(tmp_path, url=f"{server}/{archive}")
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("archive", ["evil.zip", "evil.tar.gz"])
def test_path_traversal_rejected(server: str, tmp_path: Path, archive: str) -> None:
    root = tmp_path / "deep" / "root"
    with pytest.raises(BinderInputError, match="unsafe member path"):
        dl.download_fsdd(root, url=f"{server}/{archive}")
    assert _leftovers(root) == []
    assert not list(tmp_path.rglob("evil.wav"))


def test_rejects_non_http_scheme(tmp_path: Path) -> None:
    with pytest.raises(BinderInputError, match="http"):
        dl.download_fsdd(tmp_path, url="ftp://127.0.0.1/master.zip")


def test_cli(server: str, tmp_path: Path) -> None:
    argv = ["--root", str(tmp_path), "--base-url-mnist", f"{server}/mnist/", "--base-url-fsdd", f"{server}/master.zip"]
    assert dl.main(argv) == 0
    assert len(list_recordings(tmp_path / "fsdd")) == 2500
    bad = ["--root", str(tmp_path / "other"), "--base-url-mnist", f"{server}/bad-mnist/"]
    assert dl.main(bad) == 2  # a user error: one line, exit status 2
