"""``binder cache``: the anchor cache of a run's paired images (:mod:`binder.training.cache`).

``binder cache [HYDRA OVERRIDES]`` composes the same config as ``binder train`` (the anchor, the
data, the ``cache`` node) and runs the cache task instead of training:
``binder cache anchor=openclip data=manifest data.path=pairs.csv anchor.cache=/data/vith-cache``,
then ``binder train ... anchor.cache=/data/vith-cache``. ``binder cache --verify FOLDER`` checks
every checksum of an existing cache.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List

TASK = "binder.training.tasks.cache"


def passthrough(command: str, rest: List[str]) -> int:
    """``binder cache ...``: Hydra overrides for the cache task, or ``--verify FOLDER``."""
    if rest[:1] == ["--verify"]:
        return verify(rest[1:])
    from binder.training import main

    from binder.cli import RELAUNCH

    os.environ[RELAUNCH] = "cache"
    sys.argv = [sys.argv[0], *([] if f"task={TASK}" in rest else [f"task={TASK}"]), *rest]
    main()
    return 0


def verify(rest: List[str]) -> int:
    from binder.errors import BinderError
    from binder.training.cache import AnchorCache

    if len(rest) != 1:
        print("usage: binder cache --verify FOLDER", file=sys.stderr)
        return 2
    try:
        cache = AnchorCache(rest[0], verify="full")
    except BinderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m = cache.meta
    print(f"anchor cache {cache.path}: complete; {m['count']} images x {m['views']} view(s) x {m['dim']} dims "
          f"({m['dtype']}); {m.get('skipped', 0)} unreadable image(s) left out; every checksum matches")
    return 0


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    sub.add_parser("cache", add_help=False, help="embed the paired images once with the frozen anchor (Hydra "
                                                 "overrides follow; --verify FOLDER checks a cache)",
                   description="binder cache [HYDRA OVERRIDES]: see docs/scale.md.")
    return {}
