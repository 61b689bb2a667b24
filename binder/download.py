"""Downloading one file over HTTP(S) so that it is either absent or complete and verified.

:func:`download` streams into ``<dest>.part`` and moves that onto ``dest`` (:func:`os.replace`)
only once its size and SHA-256 are verified. An interrupted transfer keeps the ``.part`` file;
the next call resumes it with a ``Range`` request (206: append; 200: the server ignored the
range, restart from zero; 416: the part is complete already, else it is discarded and
restarted). A pinned ``sha256`` / ``size`` is enforced when given; files whose publisher gives no
checksum are *trusted on first use*: the digest computed while streaming is written to the
sidecar ``<dest>.sha256`` and every later cache hit is checked against it (``verify=False`` skips
the hash; the size is still checked). Every failure is a :class:`binder.errors.ModelLoadError`
naming the URL or file. Concurrent downloads of one file are not coordinated; the size and digest
checks catch the resulting corruption. :mod:`binder.hub` builds named models and Hub
repositories on top of it.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Union

from tqdm.auto import tqdm

from binder.errors import BinderInputError, ModelLoadError
from binder.files import atomic_write, hash_file

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

CACHE_ENV = "BINDER_CACHE"
PART_SUFFIX = ".part"
SHA256_SUFFIX = ".sha256"
STREAM_CHUNK = 1 << 20  # bytes read from the socket at a time
_USER_AGENT = "binder-hub/1"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def cache_dir(explicit: PathLike | None = None) -> Path:
    """binder's cache root: ``explicit``, else ``$BINDER_CACHE``, else ``~/.cache/binder``."""
    root = explicit if explicit is not None else (os.environ.get(CACHE_ENV) or "~/.cache/binder")
    return Path(root).expanduser()



# --------------------------------------------------------------------------- small helpers
def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def _sidecar_path(dest: Path) -> Path:
    return dest.with_name(dest.name + SHA256_SUFFIX)


def _normalise_sha256(value: str | None) -> str | None:
    """Lower-case hex digest, or None; raises BinderInputError for anything else."""
    if value is None:
        return None
    digest = value.strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise BinderInputError(f"sha256 must be 64 hexadecimal characters, got {value!r}")
    return digest



def _write_sidecar(sidecar: Path, digest: str, size: int, filename: str) -> None:
    """Record ``digest`` and ``size`` atomically, in a ``sha256sum -c``-compatible form."""
    atomic_write(sidecar, f"{digest}  {filename}\n# size: {size}\n")


def _read_sidecar(sidecar: Path) -> tuple[str | None, int | None]:
    """The (digest, size) a sidecar records; (None, None) when it is absent or unreadable."""
    try:
        text = sidecar.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None, None
    digest: str | None = None
    size: int | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# size:") and line[7:].strip().isdigit():
            size = int(line[7:].strip())
        elif digest is None and line and _SHA256_RE.fullmatch(line.split()[0].lower()):
            digest = line.split()[0].lower()
    if digest is None:
        logger.warning("Ignoring %s: it holds no SHA-256 digest", sidecar)
    return digest, size


def _interrupted(url: str, part: Path, err: BaseException) -> ModelLoadError:
    """The error for a network failure; says whether a partial file is kept for resuming."""
    if part.exists():
        state = (f"the partial file {part} ({part.stat().st_size} bytes) is kept and rerunning "
                 "the download resumes it")
    else:
        state = "nothing was written; rerun to retry"
    return ModelLoadError(f"Download of {url} failed ({type(err).__name__}: {err}); {state}.")


# --------------------------------------------------------------------------- download
def download(url: str, dest: PathLike, *, sha256: str | None = None, size: int | None = None,
             progress: bool = True, timeout: float = 60.0, verify: bool = True) -> Path:
    """Download ``url`` to the file ``dest``, resuming and verifying it; return ``dest``.

    Args:
        url: An ``http://`` or ``https://`` URL.
        dest: The file to create. Its folder is created when missing.
        sha256: Expected hex digest. Without it the digest is trusted on first use and recorded
            in ``<dest>.sha256``.
        size: Expected size in bytes; an error if the server reports another size.
        progress: Show a tqdm progress bar.
        timeout: Socket timeout in seconds (connect and each read).
        verify: Hash an already cached ``dest`` against the pinned or recorded digest. A fresh
            download is always hashed while it streams.

    Raises:
        ModelLoadError: The download failed, or a size or digest does not match.
        BinderInputError: ``sha256`` is not a hex digest, or ``size`` is negative.
    """
    dest = Path(dest).expanduser()
    want_sha = _normalise_sha256(sha256)
    if size is not None and size < 0:
        raise BinderInputError(f"size must be >= 0, got {size}")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ModelLoadError(f"Cannot download {url!r}: expected an http:// or https:// URL")
    if dest.is_file():
        return _check_cached(url, dest, sha256=want_sha, size=size, verify=verify)
    if dest.exists():
        raise ModelLoadError(f"Cannot download {url} to {dest}: that path exists and is not a file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    total, digest = _fetch(url, part, size=size, sha256=want_sha, timeout=timeout,
                           progress=progress, label=dest.name)
    got = part.stat().st_size
    expected = size if size is not None else total
    if expected is not None and got != expected:
        part.unlink()
        raise ModelLoadError(f"Download of {url} into {dest} has {got} bytes, expected {expected}; "
                             "the partial file was deleted, rerun to download it again.")
    if want_sha is not None and digest != want_sha:
        part.unlink()
        raise ModelLoadError(f"SHA-256 mismatch for {dest} downloaded from {url}: expected {want_sha}, "
                             f"got {digest}; the partial file was deleted.")
    _write_sidecar(_sidecar_path(dest), digest, got, dest.name)
    os.replace(part, dest)
    logger.info("Downloaded %s to %s (%d bytes, sha256 %s)", url, dest, got, digest)
    return dest


def _check_cached(url: str, dest: Path, *, sha256: str | None, size: int | None,
                  verify: bool) -> Path:
    """Check a cached ``dest`` against the pinned or recorded size and digest."""
    sidecar = _sidecar_path(dest)
    recorded_sha, recorded_size = _read_sidecar(sidecar)
    got_size = dest.stat().st_size
    fix = f"Delete {dest} (and {sidecar.name}) and rerun to download it again from {url}."
    want_size = size if size is not None else recorded_size
    if want_size is not None and got_size != want_size:
        raise ModelLoadError(f"Cached file {dest} is corrupt: {got_size} bytes, expected {want_size}. {fix}")
    if not verify:
        logger.debug("Using cached %s without hashing it (verify=False)", dest)
        return dest
    digest = hash_file(dest).hexdigest()
    want_sha = sha256 or recorded_sha
    if want_sha is None:
        logger.warning("Cached file %s has no recorded SHA-256: recording %s (trust on first use)", dest, digest)
        _write_sidecar(sidecar, digest, got_size, dest.name)
    elif digest != want_sha:
        raise ModelLoadError(f"Cached file {dest} is corrupt: SHA-256 {digest}, expected {want_sha}. {fix}")
    logger.debug("Using cached %s (sha256 %s)", dest, digest)
    return dest


def _open(url: str, offset: int, timeout: float,
          part: Path) -> tuple[int, Message, http.client.HTTPResponse | None]:
    """GET ``url`` from byte ``offset``: (status, headers, response or None for a 416)."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:
            return 416, err.headers, None
        raise ModelLoadError(f"Download of {url} failed: HTTP {err.code} {err.reason} "
                             "(expected 200, or 206 to a Range request)") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _interrupted(url, part, err) from err
    return response.status, response.headers, response


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a ``Content-Range`` header; None for unknown parts."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return first, total


def _content_length(headers: Message) -> int | None:
    """The ``Content-Length`` header as an int, or None."""
    value = (headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _check_server_size(url: str, part: Path, size: int | None, total: int | None) -> None:
    """Raise (deleting ``part``) when the server's total disagrees with the pinned size."""
    if size is not None and total is not None and size != total:
        part.unlink(missing_ok=True)
        raise ModelLoadError(f"The server reports {total} bytes for {url} but {size} bytes are expected "
                             f"(pinned size); the partial file {part} was deleted.")


def _fetch(url: str, part: Path, *, size: int | None, sha256: str | None, timeout: float,
           progress: bool, label: str) -> tuple[int | None, str]:
    """Stream ``url`` into ``part``, resuming it; return (server's total size or None, digest)."""
    for _ in range(2):  # a second round only after a 416 that left nothing usable
        offset = part.stat().st_size if part.exists() else 0
        status, headers, response = _open(url, offset, timeout, part)
        if response is None:  # 416: the part is complete already, or stale
            _, total = _content_range(headers.get("Content-Range"))
            _check_server_size(url, part, size, total)
            expected = size if size is not None else total
            if expected == offset:
                digest = hash_file(part).hexdigest()
                if sha256 is None or digest == sha256:
                    logger.info("%s already holds all %d bytes of %s", part, offset, url)
                    return total, digest
            logger.warning("Discarding %s (%d bytes): the server refused to resume it (HTTP 416)", part, offset)
            part.unlink()
            continue
        with response:
            start, total = _plan(url, part, status, headers, offset)
            _check_server_size(url, part, size, total)
            digest = _stream(url, response, part, start=start, total=total, progress=progress, label=label)
            return total, digest
    raise ModelLoadError(f"Download of {url} failed: the server answered HTTP 416 to a request without a Range")


def _plan(url: str, part: Path, status: int, headers: Message, offset: int) -> tuple[int, int | None]:
    """Where to start writing and the total size, from a 200 or 206 response."""
    if status == 206 and offset:
        first, total = _content_range(headers.get("Content-Range"))
        if first != offset:
            part.unlink(missing_ok=True)
            raise ModelLoadError(f"Download of {url} failed: asked for bytes from {offset}, the server sent "
                                 f"Content-Range {headers.get('Content-Range')!r}; the partial file {part} "
                                 "was deleted, rerun to download it again.")
        length = _content_length(headers)
        return offset, total if total is not None else (offset + length if length is not None else None)
    if status == 200:
        if offset:
            logger.info("%s ignored the Range request: restarting the download from byte 0", url)
        return 0, _content_length(headers)
    raise ModelLoadError(f"Download of {url} failed: HTTP {status} (expected 200, or 206 to a Range request)")


def _stream(url: str, response: http.client.HTTPResponse, part: Path, *, start: int,
            total: int | None, progress: bool, label: str) -> str:
    """Append the body to ``part`` (truncating it when ``start`` is 0); return the file's digest."""
    hasher = hash_file(part) if start else hashlib.sha256()
    written = start
    bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               desc=label, disable=not progress)
    try:
        with open(part, "ab" if start else "wb") as fh, bar:
            while True:
                chunk = response.read1(STREAM_CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as err:
        raise _interrupted(url, part, err) from err
    if total is not None and written < total:
        raise _interrupted(url, part, ConnectionError(f"connection closed after {written} of {total} bytes"))
    return hasher.hexdigest()
