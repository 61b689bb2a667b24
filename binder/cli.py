"""The ``binder`` command: ``binder train ...``, ``binder download ...``, ``binder modalities``.

argparse, not Typer or Click: ``binder train`` must hand its arguments to Hydra untouched
(``modality=[audio,depth]``, ``+trainer.limit_train_batches=2``, ``--multirun``, ``--cfg job``),
which an argparse ``REMAINDER`` does without a dependency or option-parsing surprises, and the
later subcommands (``embed``, ``index``, ``search``, ``eval``, ``serve``) take a handful of typed
options each, which argparse covers. Each subcommand lives in its own function and has its own
``--help``; ``binder train --help`` is Hydra's help for the training app (config groups and
options), with binder's examples.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional, Sequence

EXAMPLES = """examples:
  binder train modality=audio                      train an audio encoder on the offline digits world
  binder train 'modality=[audio,depth]'            one model for two modalities, one run
  binder train modality=thermal data=llvip         thermal against LLVIP's visible images
  binder train experiment=five_modalities          the five-modality benchmark (a Hydra multirun)
  binder train --help                              every config group and option of training
  binder download --root ~/data                    fetch MNIST + FSDD (the digits world)
  binder modalities                                the registered modalities, plugins included
  binder index build --model M --modality image photos/ -o photos.idx
  binder search photos.idx --model M --image q.png --audio q.wav --weights 0.5,0.5 -k 10
  binder embed --model M --modality audio clips/ -o vectors.parquet
  binder serve photos.idx --model M                a local search page
  binder eval --model M --dataset esc50 --root ~/data/ESC-50 --json esc50.json
"""


def _train(args: argparse.Namespace, rest: List[str]) -> int:
    from binder.training import main

    sys.argv = ["binder train", *rest]
    main()
    return 0


def _download(args: argparse.Namespace, rest: List[str]) -> int:
    from binder.datasets.download import main

    return main(rest, prog="binder download")


def _modalities(args: argparse.Namespace, rest: List[str]) -> int:
    from binder.datasets.sources import digits_source
    from binder.registry import get_modality, list_modalities

    for name in list_modalities(args.pattern):
        spec = get_modality(name)
        digits = "digits world" if digits_source(name) is not None else "-"
        print(f"{name:<12} {spec.config_cls.__module__:<40} {digits}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="binder", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Bind any sensor modality into one embedding space anchored on a frozen CLIP.")
    parser.add_argument("--version", action="store_true", help="print binder's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", add_help=False, help="train encoders against the frozen anchor (Hydra overrides follow)",
                   description="binder train [HYDRA OVERRIDES]: see `binder train --help`.")
    sub.add_parser("download", add_help=False, help="download and verify the digits world's data (MNIST, FSDD)",
                        description="binder download --root DIR: see `binder download --help`.")
    mods = sub.add_parser("modalities", help="list the registered modalities (built-in and plugins)",
                          description="List the registered bound modalities: name, module, digits-world support.")
    mods.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'a*'")
    from binder.index.cli import add_commands

    RETRIEVAL.update(add_commands(sub))
    from binder.evaluation.cli import add_commands as add_eval_commands

    RETRIEVAL.update(add_eval_commands(sub))
    return parser


COMMANDS: Dict[str, Callable[[argparse.Namespace, List[str]], int]] = {
    "train": _train, "download": _download, "modalities": _modalities}
RETRIEVAL: Dict[str, Callable[[argparse.Namespace], int]] = {}  # index build|add|delete|info, search, embed, serve


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``binder`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("train", "download"):  # everything after the command is theirs
        return COMMANDS[argv[0]](argparse.Namespace(command=argv[0]), argv[1:])
    args = parser.parse_args(argv)
    if args.version:
        from binder import __version__

        print(f"binder {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 1
    if args.command in COMMANDS:
        return COMMANDS[args.command](args, [])
    from binder.index.cli import run

    name = f"index {args.index_command}" if args.command == "index" else args.command
    return run(RETRIEVAL[name], args)


if __name__ == "__main__":
    raise SystemExit(main())
