"""Exceptions binder raises for bad input, bad configs and bad model files.

Every error names the offending input and states what was expected (DEVELOPERS.md, standard 9).
"""
import os
from pathlib import Path


class BinderError(Exception):
    """Base class for binder's own errors."""


class BinderInputError(BinderError, ValueError):
    """An input (file, array, tensor, name) is missing, corrupt or of the wrong form."""


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
