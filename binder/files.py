"""Writing files and folders so that readers never see half of them.

One implementation for every writer in binder (model folders, the digits anchor, dataset
downloads, metrics and tables): content is written into a temporary sibling of the target and
moved into place with one rename. Replacing an existing folder uses Linux's
``renameat2(RENAME_EXCHANGE)``, which swaps the two folders atomically, so the target is complete
at every instant; where that call is unavailable the old folder is moved aside first and
:func:`recover` puts it back if the process died between the two renames. Temporaries carry the
writer's process id, so :func:`clean_stale` removes the leftovers of writers that were killed.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from binder.errors import BinderInputError, ModelLoadError

log = logging.getLogger(__name__)

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_renameat2 = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_permissions(path: Path) -> None:
    """Folders made by ``mkdtemp`` are 0700: give them the user's normal permissions."""
    os.chmod(path, 0o777 & ~_umask())


def normal_permissions(folder: Path) -> None:
    """Give every file and folder under ``folder`` the user's normal permissions (umask), as
    ``open`` would; some writers (safetensors, mkstemp, mkdtemp) create them private (0600/0700)."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


def temp_sibling(target: Path, folder: bool = True) -> Path:
    """A new empty temporary folder (or file) beside ``target``, named after it and this process."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target, "tmp"), dir=target.parent))
        _normal_permissions(tmp)
        return tmp
    fd, name = tempfile.mkstemp(prefix=_prefix(target, "tmp"), dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False where the system cannot."""
    global _renameat2
    if _renameat2 is None:
        try:
            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        except (AttributeError, OSError):
            _renameat2 = False
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_folder(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing an existing one safely."""
    if not target.exists():
        os.replace(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
    else:
        old = target.with_name(_prefix(target, "old") + "x")
        os.replace(target, old)  # a kill right here is undone by recover(target)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path, target: Path) -> Optional[int]:
    """The pid in a temporary's name, if ``path`` is a temporary of ``target``."""
    for kind in ("tmp", "old"):
        head = f".{target.name}.{kind}-"
        if path.name.startswith(head):
            pid = path.name[len(head):].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def recover(target: Path) -> None:
    """Put back a folder that a killed writer had moved aside (``target`` missing, old copy left)."""
    if target.exists() or not target.parent.is_dir():
        return
    olds = [p for p in target.parent.glob(f".{target.name}.old-*") if _owner(p, target) is not None]
    dead = [p for p in olds if not _pid_alive(_owner(p, target))]
    if dead:
        latest = max(dead, key=lambda p: p.stat().st_mtime)
        os.replace(latest, target)
        log.warning("restored %s from an interrupted replacement", target)


def clean_stale(target: Path) -> int:
    """Remove temporaries of ``target`` left by writers that no longer run; return how many."""
    recover(target)
    removed = 0
    if not target.parent.is_dir():
        return 0
    for path in target.parent.glob(f".{target.name}.*-*"):
        pid = _owner(path, target)
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d stale temporary folder(s) of %s", removed, target)
    return removed


@contextlib.contextmanager
def atomic_folder(target: "str | Path") -> Iterator[Path]:
    """``with atomic_folder(dest) as tmp:`` write into ``tmp``; on success it becomes ``dest``
    (replacing any old one), on any error or interrupt it is removed and ``dest`` is untouched."""
    target = Path(target).expanduser().absolute()
    clean_stale(target)
    tmp = temp_sibling(target)
    try:
        yield tmp
        normal_permissions(tmp)
        publish_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


HASH_CHUNK = 4 << 20  # bytes read from disk at a time when hashing


def hash_file(path: "str | Path", hasher: Any = None) -> Any:
    """Feed ``path`` into ``hasher`` (a new SHA-256 by default) in chunks; return the hasher."""
    hasher = hasher if hasher is not None else hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as fh:
        while True:
            n = fh.readinto(buffer)
            if not n:
                return hasher
            hasher.update(view[:n])


def file_digest(path: "str | Path") -> str:
    """SHA-256 hex digest of a file."""
    return hash_file(path).hexdigest()


def atomic_savefig(fig: Any, path: "str | Path", dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG at ``path`` atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write(path, buffer.getvalue())


def atomic_write(path: "str | Path", data: "str | bytes") -> Path:
    """Write ``data`` to ``path`` through a temporary file and one rename."""
    path = Path(path)
    tmp = temp_sibling(path, folder=False)
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class FileRecord:
    """What a file was when it was indexed: its real path (symbolic links resolved), size and
    modification time. A file that no longer matches is not served as the indexed item."""

    real: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: "str | os.PathLike") -> "FileRecord":
        real = os.path.realpath(path)
        st = os.stat(real)
        return cls(real, int(st.st_size), int(st.st_mtime_ns))

    @classmethod
    def taken(cls, item: Any) -> "Optional[FileRecord]":
        """The record of ``item`` if it is the path of an existing file, else None (never raises)."""
        if not isinstance(item, (str, os.PathLike)):
            return None
        try:
            return cls.of(item)
        except (OSError, ValueError):
            return None

    def matches(self, path: "str | os.PathLike") -> bool:
        """Whether ``path`` still resolves to this file, unchanged."""
        try:
            os.close(self.open(path))
        except (OSError, BinderInputError):
            return False
        return True

    def open(self, path: "str | os.PathLike") -> int:
        """A read-only descriptor of this very file, reached through ``path``: ``path`` must still
        resolve to the recorded real path, and the file opened there (never through a symbolic
        link swapped in since) must have the recorded size and time.

        Raises:
            BinderInputError: the file changed, moved or is gone.
        """
        changed = BinderInputError(f"file {str(path)!r} changed since it was indexed (its size, time or where it "
                                   "resolves differ)")
        if os.path.realpath(path) != self.real:
            raise changed
        try:
            fd = os.open(self.real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise changed from None
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            os.close(fd)
            raise changed
        return fd


LOCK_POLL = 0.1  # seconds between attempts while another process holds a lock


def lock_path(target: "str | Path") -> Path:
    """The lock file of ``target``: a hidden sibling (``.name.lock``), so that the lock outlives
    the target being replaced, swapped aside or deleted."""
    target = Path(target).expanduser().absolute()
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: "str | Path", what: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold the exclusive lock of ``target`` (``flock`` on :func:`lock_path`), waiting for another
    holder up to ``timeout`` seconds with one message saying who holds it.

    Args:
        target: The file or folder being written.
        what: What it is, for messages (``"index 'photos.idx'"``).
        timeout: Seconds to wait; 0 fails at once.

    Raises:
        BinderLockError: still held by another process (or thread) after ``timeout``.
    """
    import math

    from binder.errors import BinderLockError

    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout < 0:
        raise BinderInputError(f"wait must be a finite number of seconds >= 0, got {timeout!r}")
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        deadline, told = time.monotonic() + max(0.0, float(timeout)), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BinderLockError(f"{what} is being written by {_holder(fd)}; gave up after waiting "
                                          f"{timeout:g} s (wait longer, or try again when it is done)") from None
                if not told:
                    log.warning("%s is being written by %s: waiting for it (at most %g s)", what, _holder(fd), timeout)
                    told = True
                time.sleep(LOCK_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {' '.join(sys.argv)[:200]}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(fd: int) -> str:
    """Who holds a lock, from what its holder wrote into the lock file."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    return f"process {pid} ({command})" if pid.isdigit() else "another process"


def read_json_config(folder: Path, name: str, what: str) -> Any:
    """``folder / name`` parsed as UTF-8 JSON (a model's, an adapter's or an export's config); a
    missing file (``folder`` is not ``what``) or a file that is not JSON is one ModelLoadError."""
    path = folder / name
    if not path.is_file():
        raise ModelLoadError(f"{str(folder)!r} is not {what}: {name} is missing")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{str(path)!r} is not valid UTF-8 JSON: {err}") from None
