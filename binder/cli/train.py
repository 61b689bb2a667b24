"""``binder train`` (Hydra overrides, handed to the training app untouched), ``binder download``
(the digits world's data), ``binder modalities`` and ``binder models`` (what is registered)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Dict, List


def passthrough(command: str, rest: List[str]) -> int:
    """``binder train ...`` / ``binder download ...``: everything after the command is theirs."""
    if command == "train":
        from binder.training import main

        from binder.cli import RELAUNCH

        os.environ[RELAUNCH] = "train"  # Lightning's multi-process launch runs sys.argv again without "train"
        sys.argv = [sys.argv[0], *rest]
        main()
        return 0
    from binder.datasets.download import main as download

    return download(rest, prog="binder download")


def modalities(args: argparse.Namespace) -> int:
    """Every registered modality: name, module, whether the digits world makes it."""
    from binder.datasets.sources import digits_source
    from binder.registry import MODALITIES, get_modality, list_modalities

    for name in list_modalities(args.pattern):
        digits = "digits world" if digits_source(name) is not None else "-"
        print(f"{name:<12} {get_modality(name).config_cls.__module__:<40} {digits}")
    for plugin, why in MODALITIES.failed.items():
        print(f"(plugin {plugin} failed to load: {why})", file=sys.stderr)
    return 0


def models(args: argparse.Namespace) -> int:
    """Every model name :func:`binder.create_model` and :func:`binder.load` know."""
    from binder.factory import MODELS

    for name in MODELS.list(args.pattern):
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:<16} {doc[0] if doc else ''}")
    return 0


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    sub.add_parser("train", add_help=False, help="train encoders against the frozen anchor (Hydra overrides follow)",
                   description="binder train [HYDRA OVERRIDES]: see `binder train --help`.")
    sub.add_parser("download", add_help=False, help="download and verify the digits world's data (MNIST, FSDD)",
                   description="binder download --root DIR: see `binder download --help`.")
    mods = sub.add_parser("modalities", help="list the registered modalities (built-in and plugins)",
                          description="List the registered bound modalities: name, module, digits-world support.")
    mods.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'a*'")
    mdl = sub.add_parser("models", help="list the models binder makes and loads by name",
                         description="List the names binder.create_model and binder.load resolve.")
    mdl.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'image*'")
    return {"modalities": modalities, "models": models}
