"""How the repository's top-level folders become parts of the ``binder`` package.

The repository keeps ``modalities/``, ``datasets/`` and ``configs/`` at its root; pyproject.toml
installs them as ``binder.modalities``, ``binder.datasets`` and ``binder.configs``. Whenever the
repository root is on ``sys.path`` (``python -m pytest``, ``python train.py`` or a notebook
started there), Python can also find those folders under their bare names, where the first would
hide Hugging Face's ``datasets`` (which mteb, evaluate and many user scripts import). Each
folder's ``__init__.py`` calls :func:`step_aside`: imported as ``binder.<name>`` it does nothing;
imported under its bare name it hands that name to the installed package of that name, or, if
there is none, fails as a missing module would. This module imports nothing of binder.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def step_aside(name: str, file: str) -> None:
    """Called by a top-level folder's ``__init__.py`` with its ``__name__`` and ``__file__``."""
    if name.startswith("binder."):
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(file)))  # the repository root
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the import statement returns what sys.modules holds after this
    spec.loader.exec_module(module)
