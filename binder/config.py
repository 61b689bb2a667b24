"""Small helpers for Hydra/OmegaConf configs."""
from __future__ import annotations

from typing import Any, Dict


def to_dict(node: Any) -> Dict[str, Any]:
    """A Hydra/OmegaConf node or a mapping -> plain, resolved dict."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
