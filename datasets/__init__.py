"""Datasets for binder, installed as ``binder.datasets``.

The folder is ``datasets/`` in the repository (mapped into the ``binder`` namespace by
pyproject.toml, so it never shadows Hugging Face's ``datasets``). Contents: the offline digits
world (MNIST + FSDD and the renderers of the other modalities), paired datasets read from a
user's manifest, LLVIP, and the downloaders for the public sources.
"""
