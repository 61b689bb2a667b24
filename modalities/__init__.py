"""binder's built-in modalities, installed as ``binder.modalities``: one module per modality.

Each module registers a :class:`binder.registry.ModalitySpec` when imported; binder finds the
built-in ones by scanning this package, and third-party ones through the ``binder.modalities``
entry-point group (see ``examples/plugin_modality``).
"""
from binder.layout import step_aside

step_aside(__name__, __file__)
