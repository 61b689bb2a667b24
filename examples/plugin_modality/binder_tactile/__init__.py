"""binder-tactile: a binder plugin adding the ``tactile`` modality (pressure maps from taxel arrays).

binder imports :mod:`binder_tactile.tactile` through the ``binder.modalities`` entry point; the
module registers the modality on import. Nothing here imports binder, so this stays cheap.
"""

__version__ = "0.1.0"
