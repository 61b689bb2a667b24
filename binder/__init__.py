"""binder: bind any sensor modality into one embedding space anchored on a frozen CLIP.

After ImageBind (Girdhar et al., CVPR 2023, arXiv 2305.05665), with training, evaluation,
fine-tuning and retrieval. Public API: :func:`load`, :func:`save`, :func:`merge`, :func:`use`,
:func:`embed`, :func:`compose`, :func:`evaluate`, :class:`Index`, :func:`list_modalities`, :func:`register_modality`, :class:`ModalitySpec`,
:class:`BindModel`, and :class:`Modality` (constants for the built-in modality names).
"""
from binder.arithmetic import compose, compose_embeddings
from binder.embed import embed, use
from binder.errors import (
    BinderConfigError,
    BinderError,
    BinderInputError,
    ModelLoadError,
    NoDefaultModelError,
)
from binder.evaluation import evaluate
from binder.index import Index
from binder.io import load, merge, save
from binder.model import BindModel
from binder.registry import (
    ModalitySpec,
    get_modality,
    list_modalities,
    register_modality,
)
from binder.types import Modality

__version__ = "0.2.0"

__all__ = [
    "BindModel", "BinderConfigError", "BinderError", "BinderInputError", "Index", "ModalitySpec", "Modality",
    "ModelLoadError", "NoDefaultModelError", "compose", "compose_embeddings", "embed", "evaluate", "get_modality", "list_modalities", "load", "merge", "register_modality",
    "save", "use", "__version__",
]
