"""Exceptions binder raises for bad input, bad configs and bad model files.

Every error names the offending input and states what was expected (DEVELOPERS.md, standard 9).
"""
import os
from pathlib import Path


class BinderError(Exception):
    """Base class for binder's own errors."""


class BinderInputError(BinderError, ValueError):
    """An input (file, array, tensor, name) is missing, corrupt or of the wrong form."""


class BinderLockError(BinderError, RuntimeError):
    """Another process holds the lock of what this one wants to write, for longer than allowed."""


class BinderConfigError(BinderError, ValueError):
    """A configuration value or key is wrong: names the key, its group and what is accepted."""


class ModelLoadError(BinderError, RuntimeError):
    """A saved model directory or checkpoint is missing, incomplete or does not match."""


class NoDefaultModelError(BinderError, RuntimeError):
    """``binder.embed`` was called before ``binder.use(dir)`` set a default model."""


def existing_file(path: "str | os.PathLike", kind: str, expected: str = "a file") -> Path:
    """``path`` as a Path if it is a file; otherwise one clear error saying what it is instead.

    Args:
        path: The input path.
        kind: What the input is, e.g. ``"audio"`` (the message says ``audio file '...'``).
        expected: What a directory should have been instead, e.g. ``"an image file"``.
    """
    path = Path(path)
    if path.is_dir():
        raise BinderInputError(f"{kind} file {str(path)!r} is a directory; expected {expected}")
    if not path.is_file():
        raise BinderInputError(f"{kind} file {str(path)!r} does not exist")
    return path


def check_rate(rate: object, name: str, what: str = "sample rate", whole: bool = False) -> float:
    """A finite, positive rate in Hz (a whole number with ``whole``); otherwise one clear error."""
    import math
    import numbers

    ok = isinstance(rate, numbers.Real) and not isinstance(rate, bool) and math.isfinite(float(rate)) and rate > 0
    if ok and whole and float(rate) != int(rate):
        raise BinderInputError(f"{name}: {what} must be a whole number of Hz, got {rate!r}")
    if not ok:
        raise BinderInputError(f"{name}: {what} must be a finite positive number of Hz, got {rate!r}")
    return float(rate)


class reading:  # noqa: N801 (used as a context manager, like open)
    """``with reading(path, "depth file", "a .npy array"):`` turns any failure of a file parser
    (numpy, PIL, PyAV, zip, ...) into one :class:`BinderInputError` naming the file; binder's own
    errors pass through. Decoders raise many exception types on corrupt input; none may escape."""

    def __init__(self, path: "str | os.PathLike", kind: str, what: str) -> None:
        self.path, self.kind, self.what = path, kind, what

    def __enter__(self) -> "reading":
        return self

    def __exit__(self, kind: type, err: BaseException, tb: object) -> bool:
        if err is None or isinstance(err, BinderError) or not isinstance(err, Exception):
            return False
        detail = str(err).splitlines()[0] if str(err) else ""
        raise BinderInputError(f"{self.kind} {str(self.path)!r} is not {self.what}: {type(err).__name__}: {detail}") from err
