"""binder: bind any sensor modality into one embedding space anchored on a frozen CLIP.

After ImageBind (Girdhar et al., CVPR 2023, arXiv 2305.05665), with training, evaluation,
fine-tuning and retrieval. Public API: :func:`load`, :func:`save`, :func:`merge`,
:func:`create_model`, :func:`list_models`, :func:`use`, :func:`embed`, :func:`compose`, :func:`evaluate`,
:func:`compose_embeddings`, :func:`enroll` and :class:`Enrollment` (a source's correction from
unlabelled samples), :class:`Index`, :func:`list_modalities`, :func:`get_modality`,
:func:`register_modality`, :class:`ModalitySpec`, :class:`BindModel`, :class:`Modality` (constants
for the built-in modality names) and the errors of :mod:`binder.errors`.

Names are imported on first use (PEP 562), so ``import binder`` and the command line start
quickly and a submodule such as :mod:`binder.errors` can be imported without torch.
"""
from typing import TYPE_CHECKING, Any

from binder.errors import (
    BinderConfigError,
    BinderError,
    BinderIndexError,
    BinderInputError,
    BinderLockError,
    MissingDependencyError,
    ModelLoadError,
    NoDefaultModelError,
)

__version__ = "0.3.0"

_LAZY = {
    "BindModel": "binder.model", "Index": "binder.index", "Modality": "binder.types",
    "ModalitySpec": "binder.registry", "get_modality": "binder.registry", "list_modalities": "binder.registry",
    "register_modality": "binder.registry", "compose": "binder.api", "embed": "binder.api", "use": "binder.api",
    "compose_embeddings": "binder.arithmetic", "create_model": "binder.factory", "list_models": "binder.factory",
    "load": "binder.io", "merge": "binder.io", "save": "binder.io", "evaluate": "binder.evaluation",
    "enroll": "binder.enrollment", "Enrollment": "binder.enrollment",
}

__all__ = [
    "BindModel", "BinderConfigError", "BinderError", "BinderIndexError", "BinderInputError", "BinderLockError",
    "Enrollment", "Index", "MissingDependencyError", "ModalitySpec", "Modality", "ModelLoadError", "NoDefaultModelError",
    "__version__", "compose", "compose_embeddings", "create_model", "embed", "enroll", "evaluate", "get_modality",
    "list_modalities", "list_models", "load", "merge", "register_modality", "save", "use",
]
assert set(__all__) >= set(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'binder' has no attribute {name!r}")


def __dir__() -> list:
    return __all__


if TYPE_CHECKING:  # for type checkers and editors
    from binder.api import compose, embed, use
    from binder.arithmetic import compose_embeddings
    from binder.evaluation import evaluate
    from binder.factory import create_model, list_models
    from binder.index import Index
    from binder.io import load, merge, save
    from binder.model import BindModel
    from binder.registry import ModalitySpec, get_modality, list_modalities, register_modality
    from binder.types import Modality
