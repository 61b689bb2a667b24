"""binder's one error hierarchy: every error it raises on purpose is a :class:`BinderError`.

Each names the offending input (file, key, name, index) and states what was expected; the CLI
prints it as one line ``error: ...`` with exit status 2 (``binder.cli``), never a traceback.

- :class:`BinderInputError` (also a ``ValueError``): an input is missing, corrupt or of the wrong form.
- :class:`BinderConfigError` (``ValueError``): a configuration key or value is wrong.
- :class:`ModelLoadError` (``RuntimeError``): a model folder or checkpoint cannot be loaded.
- :class:`BinderIndexError` (``RuntimeError``): an index folder is damaged, foreign or half-written.
- :class:`BinderLockError` (``RuntimeError``): another process holds a lock for longer than allowed.
- :class:`MissingDependencyError` (``ImportError``): an optional package is not installed.
- :class:`NoDefaultModelError` (``RuntimeError``): :func:`binder.embed` before :func:`binder.use`.
"""
import os
from pathlib import Path


class BinderError(Exception):
    """Base class for binder's own errors."""


class BinderInputError(BinderError, ValueError):
    """An input (file, array, tensor, name) is missing, corrupt or of the wrong form."""


class BinderIndexError(BinderError, RuntimeError):
    """An index folder is damaged, half-written, foreign, or was changed under a writer."""


class BinderLockError(BinderError, RuntimeError):
    """Another process holds the lock of what this one wants to write, for longer than allowed."""


class MissingDependencyError(BinderError, ImportError):
    """An optional package that a feature needs is not installed; says how to install it."""

    def __init__(self, package: str, feature: str, extra: str) -> None:
        super().__init__(f"{feature} needs {package}: pip install 'binder-embed[{extra}]'")


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
        raise BinderInputError(f"{self.kind} {str(self.path)!r} is not {self.what}: {type(err).__name__}: "
                               f"{detail}") from err
