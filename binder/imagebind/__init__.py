"""ImageBind's official checkpoint in binder (Girdhar et al., CVPR 2023, arXiv 2305.05665).

``binder.load("imagebind_huge.pth")`` (facebookresearch/ImageBind) returns an
:class:`ImageBindModel`: image and text through :class:`ImageBindAnchor` (ImageBind's frozen
vision and text towers), audio, depth, thermal and IMU through ImageBind's trunks, video through
the vision tower. It saves, reloads and fine-tunes like any binder model. Modules: ``layers``
(towers), ``mapping`` (official <-> binder key names), ``checkpoint`` (reading, recognition),
``anchor``, ``model``, ``load``.
"""
from binder.imagebind.anchor import ImageBindAnchor
from binder.imagebind.checkpoint import read_state
from binder.imagebind.layers import ImageBindTrunk, TextConfig, TextTower, TrunkConfig
from binder.imagebind.load import load_checkpoint
from binder.imagebind.model import ImageBindModel

__all__ = ["ImageBindAnchor", "ImageBindModel", "ImageBindTrunk", "TextConfig", "TextTower", "TrunkConfig",
           "load_checkpoint", "read_state"]
