"""Datasets for binder, installed as ``binder.datasets``.

The folder is ``datasets/`` in the repository (mapped into the ``binder`` namespace by
pyproject.toml; imported from the repository root as ``datasets`` it steps aside for Hugging
Face's ``datasets``: :mod:`binder.layout`). Contents: the offline digits
world (MNIST + FSDD and the renderers of the other modalities), paired datasets read from a
user's manifest, LLVIP, and the downloaders for the public sources.
"""
from binder.layout import step_aside

step_aside(__name__, __file__)
