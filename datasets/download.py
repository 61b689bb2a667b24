"""Download the offline digits world (MNIST test set + Free Spoken Digit Dataset) from its sources.

Sources and licences:

* MNIST (Yann LeCun, Corinna Cortes, Christopher J. C. Burges), test split
  ``t10k-{images-idx3,labels-idx1}-ubyte.gz``, fetched from the public mirror
  https://ossci-datasets.s3.amazonaws.com/mnist/ (fallback
  https://storage.googleapis.com/cvdf-datasets/mnist/); commonly distributed under CC BY-SA 3.0.
* Free Spoken Digit Dataset (Zohar Jackson et al.), https://github.com/Jakobovski/free-spoken-digit-dataset,
  CC BY-SA 4.0. Only ``recordings/*.wav`` of the speakers george, jackson, lucas, nicolas and
  yweweler (2,500 clips) are kept; speakers added upstream later (e.g. theo) are dropped.

Every file is written to a temporary name next to its target, verified against a SHA-256 digest
hard-coded below, then renamed into place; a mismatch raises :class:`BinderInputError` and leaves
nothing behind. Files already present and verified are not downloaded again. Usage::

    python -m binder.datasets.download --root DIR
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import sys
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from binder.errors import BinderInputError
from binder.files import atomic_folder, temp_sibling

log = logging.getLogger("binder.datasets.download")  # stable name, also under `python -m`

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
#: SHA-256 of the *decompressed* IDX payload (gzip bytes differ between mirrors).
MNIST_FILES: dict[str, str] = {
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip"
FSDD_SPEAKERS: tuple[str, ...] = ("george", "jackson", "lucas", "nicolas", "yweweler")
FSDD_COUNT = 2500
#: SHA-256 over the sorted lines ``"<file name> <sha256 of file>\n"`` of the kept recordings.
FSDD_TREE_SHA256 = "6a06727727ba5a123c8c6299e6f0cd253c6737b471467dd6a82b937d11e11686"
FSDD_SPEAKERS_CSV = (
    "speaker,gender,accent,language\n"
    "george,male,GRC/Greek,english\n"
    "jackson,male,USA/neutral,english\n"
    "lucas,male,BEL/French,english\n"
    "nicolas,male,BEL/French,english\n"
    "yweweler,male,DEU/German,english\n"
)

DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 16
_MAX_MEMBER_BYTES = 16 << 20  # no FSDD clip comes near this; guards against decompression bombs
_WAV_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` into the existing file ``dest``, with a progress bar.

    Raises:
        BinderInputError: the URL's scheme is not http, https or file.
        ConnectionError: the server could not be reached, answered an error, or timed out.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise BinderInputError(f"download URL {url!r} must start with http://, https:// or file://")
    request = urllib.request.Request(url, headers={"User-Agent": "binder-datasets-downloader"})
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            desc = url.rstrip("/").rsplit("/", 1)[-1]
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None, leave=False) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        raise ConnectionError(f"could not download {url!r}: {err}") from err


def _payload_sha256(path: Path, gz: bool, what: str) -> str:
    """SHA-256 of ``path``'s content, gunzipped first when ``gz``.

    Raises:
        BinderInputError: ``gz`` is set and the file is not valid gzip (``what`` names it).
    """
    digest = hashlib.sha256()
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise BinderInputError(f"{what} is not a valid gzip file: {err}") from err
    return digest.hexdigest()


def _mnist_present(folder: Path, name: str) -> bool:
    """Whether ``name`` (or its decompressed form) is in ``folder`` with the expected digest."""
    for path, gz in ((folder / name, True), (folder / name[: -len(".gz")], False)):
        if path.is_file():
            try:
                if _payload_sha256(path, gz, repr(str(path))) == MNIST_FILES[name]:
                    return True
            except BinderInputError:
                pass
            log.warning("%s exists but does not verify; it will be downloaded again", path)
    return False


def _download_mnist_file(name: str, folder: Path, urls: Sequence[str], timeout: float) -> None:
    """Fetch ``name`` from the first of ``urls`` that serves a verified copy; rename it into place."""
    expected, errors = MNIST_FILES[name], []
    for url in urls:
        tmp = temp_sibling(folder / name, folder=False)
        try:
            _fetch(url, tmp, timeout)
            actual = _payload_sha256(tmp, True, f"MNIST file {name!r} from {url!r}")
            if actual != expected:
                raise BinderInputError(
                    f"MNIST file {name!r} from {url!r} failed its integrity check: SHA-256 of the "
                    f"decompressed payload is {actual}, expected {expected}"
                )
            os.replace(tmp, folder / name)
            return
        except (ConnectionError, BinderInputError) as err:
            log.warning("%s", err)
            errors.append(err)
        finally:
            tmp.unlink(missing_ok=True)
    # A corrupt copy is the more telling failure; otherwise report the last network error.
    raise next((e for e in reversed(errors) if isinstance(e, BinderInputError)), errors[-1])


def download_mnist(root: str | Path, base_url: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download and verify the MNIST test set into ``root/mnist``.

    Args:
        root: data root; files go to ``root/mnist/t10k-{images-idx3,labels-idx1}-ubyte.gz``.
        base_url: mirror folder URL; default: :data:`MNIST_MIRRORS`, tried in order.
        timeout: seconds to wait for the server on each network operation.

    Returns:
        The folder ``root/mnist``, readable by :func:`binder.datasets.mnist.load_mnist`.

    Raises:
        BinderInputError: a downloaded file does not match its hard-coded SHA-256.
        ConnectionError: no mirror could be reached.
    """
    folder = Path(root).expanduser() / "mnist"
    missing = [name for name in MNIST_FILES if not _mnist_present(folder, name)]
    if not missing:
        log.info("MNIST already present and verified in %s", folder)
        return folder
    bases = [base_url] if base_url else list(MNIST_MIRRORS)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name in missing:
            _download_mnist_file(name, folder, [b.rstrip("/") + "/" + name for b in bases], timeout)
    except BaseException:
        if created:  # leave no partial folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("MNIST test set ready in %s", folder)
    return folder


def _tree_digest(folder: Path) -> tuple[int, str]:
    """(count, SHA-256 over sorted ``"<name> <sha256>\\n"`` lines) of the ``*.wav`` in ``folder``."""
    paths = sorted(folder.glob("*.wav"), key=lambda p: p.name)
    lines = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in paths)
    return len(paths), hashlib.sha256(lines.encode()).hexdigest()


def _fsdd_present(target: Path) -> bool:
    """Whether ``target`` holds the verified recordings and a speakers table."""
    if not (target / "recordings").is_dir() or not (target / "speakers.csv").is_file():
        return False
    return _tree_digest(target / "recordings") == (FSDD_COUNT, FSDD_TREE_SHA256)


def _iter_archive(path: Path, url: str) -> Iterator[tuple[str, IO[bytes] | None]]:
    """Yield ``(member name, readable file or None for non-regular members)`` of a zip or tar."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    yield info.filename, None
                else:
                    with zf.open(info) as f:
                        yield info.filename, f
    elif tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                yield member.name, (tf.extractfile(member) if member.isfile() else None)
    else:
        raise BinderInputError(f"FSDD archive from {url!r} is neither a zip nor a tar archive")


def _safe_parts(name: str, url: str) -> list[str]:
    """Split a member name into parts, rejecting absolute paths and ``..`` (path traversal)."""
    parts = re.split(r"[\\/]+", name.strip("/\\")) if name else []
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise BinderInputError(
            f"FSDD archive from {url!r} holds the unsafe member path {name!r} "
            "(absolute or containing '..'); refusing to extract it"
        )
    return parts


def _read_capped(f: IO[bytes], name: str, url: str) -> bytes:
    """Read a member, refusing anything larger than any real FSDD file could be."""
    data = f.read(_MAX_MEMBER_BYTES + 1)
    if len(data) > _MAX_MEMBER_BYTES:
        raise BinderInputError(f"FSDD archive from {url!r}: member {name!r} exceeds {_MAX_MEMBER_BYTES} bytes")
    return data


def _speakers_table(text: str | None) -> str:
    """The archive's speakers table restricted to our speakers, or ours if it lacks any of them."""
    if text is not None:
        reader = csv.DictReader(io.StringIO(text))
        rows = [r for r in reader if r.get("speaker") in FSDD_SPEAKERS]
        if reader.fieldnames and {r["speaker"] for r in rows} == set(FSDD_SPEAKERS):
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\n")
            writer.writeheader()
            writer.writerows(sorted(rows, key=lambda r: r["speaker"]))
            return out.getvalue()
        log.info("the archive's speakers table lacks some speakers; using the built-in one")
    return FSDD_SPEAKERS_CSV


def _extract_fsdd(archive: Path, url: str, staging: Path) -> None:
    """Write the kept ``recordings/*.wav`` and ``speakers.csv`` of ``archive`` into ``staging``."""
    recordings = staging / "recordings"
    recordings.mkdir()
    speakers_text, dropped = None, 0
    for name, f in _iter_archive(archive, url):
        parts = _safe_parts(name, url)
        if f is None or not parts:
            continue
        match = _WAV_NAME.match(parts[-1])
        if len(parts) >= 2 and parts[-2] == "recordings" and match:
            if match.group(2) not in FSDD_SPEAKERS:
                dropped += 1
                continue
            # The output name is the regex-checked base name: nothing can land outside `recordings`.
            (recordings / parts[-1]).write_bytes(_read_capped(f, name, url))
        elif parts[-1] == "speakers.csv" and len(parts) <= 2:
            speakers_text = _read_capped(f, name, url).decode("utf-8", "replace")
    if dropped:
        log.info("dropped %d recordings of speakers other than %s", dropped, ", ".join(FSDD_SPEAKERS))
    (staging / "speakers.csv").write_text(_speakers_table(speakers_text), encoding="utf-8")


def _verify_fsdd(recordings: Path, url: str) -> None:
    """Check the count and tree digest of extracted recordings; raise BinderInputError if off."""
    count, actual = _tree_digest(recordings)
    if count != FSDD_COUNT:
        raise BinderInputError(
            f"FSDD archive from {url!r} holds {count} recordings of {', '.join(FSDD_SPEAKERS)}, "
            f"expected {FSDD_COUNT}"
        )
    if actual != FSDD_TREE_SHA256:
        raise BinderInputError(
            f"FSDD recordings from {url!r} failed their integrity check: tree SHA-256 is {actual}, "
            f"expected {FSDD_TREE_SHA256}"
        )


def download_fsdd(root: str | Path, url: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download, filter and verify the Free Spoken Digit Dataset into ``root/fsdd``.

    Args:
        root: data root; writes ``root/fsdd/recordings/*.wav`` and ``root/fsdd/speakers.csv``.
        url: archive URL (GitHub ``.zip`` or ``.tar.gz``); default: :data:`FSDD_URL`.
        timeout: seconds to wait for the server on each network operation.

    Returns:
        The folder ``root/fsdd``, readable by :func:`binder.datasets.fsdd.list_recordings`.

    Raises:
        BinderInputError: the archive is malformed, unsafe, or its recordings do not verify.
        ConnectionError: the archive could not be downloaded.
    """
    root, url = Path(root).expanduser(), url or FSDD_URL
    target = root / "fsdd"
    if _fsdd_present(target):
        log.info("FSDD already present and verified in %s", target)
        return target
    if target.exists():
        log.warning("%s exists but does not verify; it will be replaced", target)
    root.mkdir(parents=True, exist_ok=True)
    archive = temp_sibling(root / "fsdd-archive", folder=False)
    try:
        with atomic_folder(target) as staging:  # replaces an unverified old copy only once verified
            _fetch(url, archive, timeout)
            _extract_fsdd(archive, url, staging)
            _verify_fsdd(staging / "recordings", url)
    finally:
        archive.unlink(missing_ok=True)
    log.info("FSDD ready in %s", target)
    return target


def download_all(root: str | Path, mnist_base_url: str | None = None, fsdd_url: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Download MNIST (test set) and FSDD into ``root``; return ``root``, usable as ``data.root``."""
    download_mnist(root, mnist_base_url, timeout)
    download_fsdd(root, fsdd_url, timeout)
    return Path(root).expanduser()


def main(argv: Sequence[str] | None = None, prog: str = "python -m binder.datasets.download") -> int:
    """Command line: ``binder download --root DIR`` (or ``python -m binder.datasets.download``);
    returns the exit status."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Download and verify MNIST (test set) and FSDD.")
    parser.add_argument("--root", required=True, type=Path, help="data root to fill (mnist/, fsdd/)")
    parser.add_argument("--base-url-mnist", default=None, help="MNIST mirror folder URL")
    parser.add_argument("--base-url-fsdd", default=None, help="URL of the FSDD archive (.zip or .tar.gz)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        root = download_all(args.root, args.base_url_mnist, args.base_url_fsdd, args.timeout)
    except (BinderInputError, OSError) as err:  # one line and exit status 2, like every binder command
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("data ready: use data.root=%s or BINDER_DATA=%s", root, root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
