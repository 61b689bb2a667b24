"""Making models by name, timm-style: ``binder.create_model(name, pretrained=...)`` and
``binder.list_models(pattern)``, and the registries :func:`binder.load` resolves through.

Three registries (:class:`binder.extension.Registry`), each filled by the module that owns the
thing registered, never by this one:

- :data:`MODELS`: model names -> factories ``(pretrained: bool, **kwargs) -> model``
  (``bind``: any anchor + any registered modalities; ``imagebind_huge``: ImageBind's checkpoint).
- :data:`ARCHITECTURES`: the ``architecture`` of a saved ``config.json`` -> the model class that
  rebuilds it (``bind``: :class:`binder.model.BindModel`; ``imagebind``).
- :data:`FORMATS`: formats of saved models -> a :class:`Format` that recognises and loads one
  (``binder``: a model folder, :mod:`binder.io`; ``imagebind``: the official checkpoint; ``onnx``:
  an ONNX export, :mod:`binder.onnx.runtime`).

Third-party packages add to them through the entry-point groups ``binder.models``,
``binder.architectures`` and ``binder.formats``. This module imports nothing heavy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Protocol

from binder.errors import ModelLoadError
from binder.extension import Registry, protocol_check

ModelFactory = Callable[..., Any]


class Format(Protocol):
    """A way models are stored: ``recognises(path)`` says whether a file or folder is one,
    ``load(path, device=..., verify=..., **options)`` returns the model. A format may name the
    ``runtimes`` it loads into (default: ``("torch",)``)."""

    name: str

    def recognises(self, path: Path) -> bool: ...

    def load(self, path: Path, **options: Any) -> Any: ...


MODELS: Registry = Registry("model", group="binder.models", builtin=("binder.model", "binder.imagebind"),
                            error=ModelLoadError)
ARCHITECTURES: Registry = Registry("model architecture", group="binder.architectures",
                                   builtin=("binder.model", "binder.imagebind"), error=ModelLoadError)
FORMATS: Registry = Registry("model format", group="binder.formats",
                             builtin=("binder.io", "binder.imagebind", "binder.onnx.runtime"),
                             check=protocol_check(Format), error=ModelLoadError)


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> Any:
    """A model by registered name (see :func:`list_models`), with its published weights when
    ``pretrained`` (downloaded once into binder's cache), else freshly initialised.

    ``binder.create_model("bind", anchor="binder-digits", modalities=["audio", "depth"])``,
    ``binder.create_model("imagebind_huge", pretrained=True)``.

    Raises:
        ModelLoadError: an unknown name (the error lists the registered ones).
    """
    return MODELS.get(name)(pretrained=pretrained, **kwargs)


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching a shell wildcard ``pattern``."""
    return MODELS.list(pattern)


def recognise(path: Path) -> str:
    """The name of the format the file or folder ``path`` is stored in.

    Raises:
        ModelLoadError: no registered format recognises it.
    """
    for name, fmt in FORMATS.items():
        if fmt.recognises(path):
            return name
    kind = "folder" if path.is_dir() else "file"
    raise ModelLoadError(f"{str(path)!r} is not a model binder can load: no registered format recognises this "
                         f"{kind} (formats: {', '.join(FORMATS.list())}); expected a binder model folder "
                         "(config.json + model.safetensors) or an ImageBind checkpoint")
