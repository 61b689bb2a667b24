"""Modality plugins for binder: one module per modality, each registering itself on import.

binder finds these through the ``binder.modalities`` entry-point group (see pyproject.toml).
"""
