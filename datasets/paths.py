"""Where data and caches live: config value, then environment variable, then a default."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from binder.errors import BinderInputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_root(explicit: Optional[str] = None) -> Path:
    """Resolve the data root: ``explicit`` > ``$BINDER_DATA`` > ``../shared/data`` if it exists.

    Raises:
        BinderInputError: nothing was given and no default folder exists.
    """
    for candidate in (explicit, os.environ.get("BINDER_DATA")):
        if candidate:
            return Path(candidate).expanduser().resolve()
    for base in (Path.cwd(), REPO_ROOT):
        default = (base / ".." / "shared" / "data").resolve()
        if default.is_dir():
            return default
    raise BinderInputError(
        "no data root: set data.root=... or BINDER_DATA, or download the data with "
        "`python -m binder.datasets.download --root DIR`"
    )
