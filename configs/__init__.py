"""binder's Hydra configs, shipped as package data (``pkg://binder.configs``).

The repository keeps them in the top-level ``configs/`` folder; the wheel installs them as
``binder/configs``, so ``binder train`` composes the same configs from any directory.
"""
from binder.layout import step_aside

step_aside(__name__, __file__)
