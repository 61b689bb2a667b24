"""Datasets for binder, installed as the ``binder_datasets`` package.

The folder is ``datasets/`` in the repository; it is installed under another name so it never
shadows Hugging Face's ``datasets`` package. Contents: the offline digits world (MNIST + FSDD),
paired datasets read from a user's manifest, and the downloaders for the public sources.
"""
