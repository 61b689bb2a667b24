"""ImageBind's official checkpoint in binder (Girdhar et al., CVPR 2023, arXiv 2305.05665).

``binder.load("imagebind_huge.pth")`` (or ``binder.load("imagebind_huge")``, downloaded once)
returns an :class:`ImageBindModel`: image and text through :class:`ImageBindAnchor` (ImageBind's
frozen vision and text towers), audio, depth, thermal and IMU through binder's encoders with their
``imagebind`` preset (ImageBind's trunk structure, :class:`binder.layers.Trunk`), video through
the vision tower. It saves, reloads and fine-tunes like any binder model. Modules: ``text`` (the
text tower), ``mapping`` (official <-> binder key names), ``checkpoint`` (reading, recognition),
``anchor``, ``model``, ``load``.
"""
from binder.imagebind.anchor import ImageBindAnchor
from binder.imagebind.checkpoint import read_state
from binder.imagebind.load import load_checkpoint
from binder.imagebind.model import ImageBindModel
from binder.imagebind.text import TextConfig, TextTower

__all__ = ["ImageBindAnchor", "ImageBindModel", "TextConfig", "TextTower", "load_checkpoint", "read_state"]
