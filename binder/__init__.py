"""binder: bind any sensor modality into one embedding space anchored on a frozen CLIP.

After ImageBind (Girdhar et al., CVPR 2023, arXiv 2305.05665), with training, evaluation,
fine-tuning and retrieval. Public API: :func:`load`, :func:`save`, :func:`use`, :func:`embed`,
:class:`Modality`, :func:`list_modalities`, :class:`BindModel`.
"""
from binder.errors import BinderError, BinderInputError, ModelLoadError, NoDefaultModelError
from binder.types import Modality
from binder.registry import get_modality, list_modalities, register_modality, ModalitySpec
from binder.model import BindModel
from binder.io import load, save
from binder.embed import embed, use

__version__ = "0.1.0"

__all__ = [
    "BindModel", "BinderError", "BinderInputError", "ModalitySpec", "Modality", "ModelLoadError",
    "NoDefaultModelError", "embed", "get_modality", "list_modalities", "load", "register_modality",
    "save", "use", "__version__",
]
