"""The ``binder`` command: one module per command group, one way every user error ends.

``binder train ...`` (Hydra overrides, handed over untouched), ``binder download``,
``binder modalities``, ``binder models`` (:mod:`binder.cli.train`); ``binder cache ...`` (Hydra overrides,
:mod:`binder.cli.cache`); ``binder shards pack|info`` (:mod:`binder.cli.shards`); ``binder index
build|add|delete|info`` (:mod:`binder.cli.index`); ``binder search`` and ``binder embed``
(:mod:`binder.cli.search`); ``binder serve`` (:mod:`binder.cli.serve`); ``binder eval``
(:mod:`binder.cli.eval`); ``binder merge-adapters`` (:mod:`binder.cli.adapters`); ``binder export``
(:mod:`binder.cli.export`); ``binder enroll`` (:mod:`binder.cli.enroll`).

argparse, not Typer or Click: ``binder train`` must hand its arguments to Hydra untouched
(``modality=[audio,depth]``, ``+trainer.limit_train_batches=2``, ``--multirun``, ``--cfg job``),
and the other commands take a handful of typed options each, which argparse covers. Each group
module has ``add_commands(subparsers) -> {command: handler}``. Results go to stdout, logs and
progress to stderr; every binder error is one line ``error: ...`` and exit status 2 (:func:`run`).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

GROUPS = ("binder.cli.train", "binder.cli.index", "binder.cli.search", "binder.cli.serve", "binder.cli.eval",
          "binder.cli.cache", "binder.cli.shards", "binder.cli.adapters",
          "binder.cli.export", "binder.cli.enroll")
PASSTHROUGH = {"train": "binder.cli.train", "download": "binder.cli.train", "cache": "binder.cli.cache"}
"""Commands whose arguments are all theirs (Hydra, the downloader), and the module that runs them."""
RELAUNCH = "BINDER_COMMAND"
"""Set by ``binder train``/``binder cache`` for the processes Lightning starts again with the same
arguments minus the command (multi-process strategies): they run that command."""

EXAMPLES = """examples:
  binder train modality=audio                      train an audio encoder on the offline digits world
  binder train 'modality=[audio,depth]'            one model for two modalities, one run
  binder train modality=thermal data=llvip         thermal against LLVIP's visible images
  binder train experiment=five_modalities          the five-modality benchmark (a Hydra multirun)
  binder cache anchor=openclip data=manifest data.path=pairs.csv anchor.cache=vith.cache
                                                   embed the paired images once (then train with anchor.cache=...)
  binder shards pack pairs.csv -o shards/ --modality audio --cache vith.cache   streaming shards of pairs
  binder train --help                              every config group and option of training
  binder download --root ~/data                    fetch MNIST + FSDD (the digits world)
  binder modalities                                the registered modalities, plugins included
  binder models                                    the models create_model and load know by name
  binder index build --model M --modality image photos/ -o photos.idx
  binder search photos.idx --model M --image q.png --audio q.wav --weights 0.5,0.5 -k 10
  binder search depth.idx --model M --depth scan.npy    any modality the model embeds
  binder embed --model M --modality audio clips/ -o vectors.parquet
  binder serve photos.idx --model M                a local search page
  binder eval --model M --dataset esc50 --root ~/data/ESC-50 --json esc50.json
  binder train modality=audio init_from=M finetune=lora finetune.rank=8     LoRA adapters on a trained model
  binder merge-adapters --model M --adapters RUN/adapters -o merged/        fold them into the model
  binder export M --format onnx -o M.onnx --quantize int8    ONNX graphs for onnxruntime
  binder enroll --model M --modality audio george/ -o george.safetensors    a speaker's correction, from unlabelled clips
  binder search clips.idx --model M --audio q.wav --enrollment george.safetensors   a query in that speaker's voice
"""

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> "tuple[argparse.ArgumentParser, Dict[str, Handler]]":
    """The top-level parser with every group's subcommands, and the handlers by command name."""
    parser = argparse.ArgumentParser(
        prog="binder", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Bind any sensor modality into one embedding space anchored on a frozen CLIP.")
    parser.add_argument("--version", action="store_true", help="print binder's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: Dict[str, Handler] = {}
    for group in GROUPS:
        handlers.update(importlib.import_module(group).add_commands(sub))
    return parser, handlers


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Run a handler; a binder error is one line on stderr and exit status 2."""
    from binder.errors import BinderError
    from binder.logs import quiet_third_party

    quiet_third_party()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return handler(args)
    except BinderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``binder`` console script; returns the exit status."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    again = os.environ.get(RELAUNCH)
    if again in PASSTHROUGH and (not argv or argv[0] not in PASSTHROUGH) and "=" in (argv[0] if argv else "="):
        argv = [again, *argv]  # a process Lightning launched again with the overrides only (trainer=ddp)
    if argv and argv[0] in PASSTHROUGH:
        return importlib.import_module(PASSTHROUGH[argv[0]]).passthrough(argv[0], argv[1:])
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from binder import __version__

        print(f"binder {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 1
    sub = {"index": "index_command", "shards": "shards_command"}.get(args.command)
    name = f"{args.command} {getattr(args, sub)}" if sub else args.command
    return run(handlers[name], args)
