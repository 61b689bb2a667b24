"""``binder eval``: evaluate a model on a benchmark, list the datasets, compare runs.

    binder eval --model M --dataset esc50 --root /data/ESC-50 [--split all] [--templates "a sound of {}." ...
        | --templates-file f.txt] [--option key=value ...] [--probe] [--json out.json]
        [--predictions out.parquet] [--chart out.png] [--batch-size 32] [--workers 2] [--device cpu]
    binder eval --list
    binder eval compare a.json b.json ... [--chart cmp.png]

A thin front end over :func:`binder.evaluate` and :mod:`binder.evaluation.results`: results go to
stdout as a table, logs and progress to stderr.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict

log = logging.getLogger(__name__)


def list_command() -> int:
    """Every registered dataset: name, task, modality, splits, options, published figure."""
    from binder.evaluation.base import DATASETS

    print(f"{'dataset':<13}{'task':<26}{'modality':<10}{'splits':<42}options")
    for name, cls in DATASETS.items():
        opts = ", ".join(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ""
        modality = cls.modality or "(option)"
        print(f"{name:<13}{cls.task:<26}{modality:<10}{', '.join(cls.splits):<42}{opts or '-'}")
    if DATASETS.failed:
        for plugin, why in DATASETS.failed.items():
            print(f"(plugin {plugin} failed to load: {why})")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from binder.evaluation.chart import plot_compare
    from binder.evaluation.results import check_writable, format_compare, read_records

    if args.chart:
        check_writable(args.chart, "chart")
    records = read_records(args.results)
    print(format_compare(records))
    if args.chart:
        print(f"chart: {plot_compare(records, args.chart)}", file=sys.stderr)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """``binder eval``: dispatch to --list, compare, or one evaluation."""
    if args.eval_command == "compare":
        return compare_command(args)
    if args.list:
        return list_command()
    from binder.errors import BinderInputError

    missing = [f"--{k}" for k in ("model", "dataset") if not getattr(args, k)]
    if missing:
        raise BinderInputError(f"binder eval needs {' and '.join(missing)} (or --list, or compare)")
    from binder.evaluation.base import parse_options
    from binder.evaluation.results import format_result
    from binder.evaluation.run import evaluate

    chart = args.chart or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    result = evaluate(
        args.model, args.dataset, args.root, split=args.split, templates=args.templates,
        templates_file=args.templates_file, options=parse_options(args.option or []), probe=args.probe,
        shots=args.shots, seeds=args.seeds, probe_l2=args.probe_l2, batch_size=args.batch_size, workers=args.workers,
        device=args.device, cache=not args.no_cache, cache_dir=args.cache_dir, json_path=args.json,
        predictions=args.predictions, chart=chart, model_name=args.name, progress=sys.stderr.isatty())
    print(format_result(result.record))
    skipped = result.skipped
    if skipped:
        print(f"skipped {len(skipped)}:" + "".join(f"\n  {s['id']}: {s['reason']}" for s in skipped[:20])
              + (f"\n  ... and {len(skipped) - 20} more (all listed in the JSON)" if len(skipped) > 20 else ""))
    for what, path in result.paths.items():
        print(f"{what}: {path}", file=sys.stderr)
    return 0


def _ints(text: str) -> list:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``eval`` to the subparsers; returns its handler by command name."""
    p = sub.add_parser("eval", help="evaluate a model on a benchmark (zero-shot, retrieval, few-shot probes)",
                       description="Evaluate any bound model on the field's benchmarks with each one's protocol "
                                   "(binder eval --list names them), or compare result files.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  binder eval --model imagebind_huge --dataset esc50 --root ~/data/ESC-50 "
                              "--json esc50.json\n  binder eval --model M --dataset folder --root photos/ --option "
                              "modality=image\n  binder eval compare a.json b.json --chart cmp.png")
    p.add_argument("--list", action="store_true", help="list the datasets, their tasks, splits and options")
    p.add_argument("--model", help="a model folder, imagebind_huge, hf-hub:org/name or open_clip:ARCH@TAG")
    p.add_argument("--dataset", help="a registered dataset (see --list)")
    p.add_argument("--root", help="the dataset's folder in its official layout (manifest: the manifest file)")
    p.add_argument("--split", help="the split (default: the dataset's evaluation split)")
    p.add_argument("--templates", nargs="+",
                   help='prompt templates with {}, e.g. "a sound of {}." (@clip, @sound: sets)')
    p.add_argument("--templates-file", help="prompt templates, one per line")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a protocol option of the dataset (repeatable)")
    p.add_argument("--probe", action="store_true", help="few-shot linear probes instead of zero-shot")
    p.add_argument("--shots", type=_ints, default=[1, 2, 4, 8, 16], help="probe shots per class (default 1,2,4,8,16)")
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="probe seeds (default 0,1,2)")
    p.add_argument("--probe-l2", type=float, default=1e-3, help="probe L2 penalty (default 1e-3)")
    p.add_argument("--json", help="write the CLIP_benchmark JSON result here (and a chart beside it)")
    p.add_argument("--predictions", help="write every item's true label(s) and top-5 predictions here (.parquet)")
    p.add_argument("--chart", help="write a PNG chart here (default: beside --json)")
    p.add_argument("--name", help="the model name in the JSON (default: --model)")
    p.add_argument("--batch-size", type=int, default=32, help="items per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes reading files (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--cache-dir", help="the embedding cache folder (default $BINDER_CACHE/eval)")
    esub = p.add_subparsers(dest="eval_command", metavar="[compare]")
    cmp_ = esub.add_parser("compare", help="print and draw result files side by side")
    cmp_.add_argument("results", nargs="+", help="CLIP_benchmark JSON files written by binder eval (or others)")
    cmp_.add_argument("--chart", help="write a PNG of the runs side by side here")
    return {"eval": eval_command}
