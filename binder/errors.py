"""Exceptions binder raises for bad input, bad configs and bad model files.

Every error names the offending input and states what was expected (DEVELOPERS.md, standard 9).
"""


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
