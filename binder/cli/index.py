"""``binder index build|add|delete|info``: thin front ends over :class:`binder.Index`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict


def load_model(source: str) -> Any:
    from binder.io import load

    return load(source)


def print_report(report: Any, out: Any = None) -> None:
    """The number indexed and every skipped file with its reason."""
    out = out or sys.stdout
    print(f"indexed {report.indexed}", file=out)
    if report.skipped:
        print(f"skipped {len(report.skipped)}:", file=out)
        for path, reason in report.skipped:
            print(f"  {path}: {reason}", file=out)


def index_build(args: argparse.Namespace) -> int:
    from binder.index import Index
    from binder.index.core import check_target
    from binder.index.items import check_bulk_options

    check_bulk_options(args.batch_size, args.workers)
    check_target(Path(args.output).expanduser().absolute(), args.overwrite)  # before loading the model
    options = {k: v for k, v in (("url", args.url), ("collection", args.collection)) if v}
    index = Index.build(load_model(args.model), args.items, modality=args.modality, path=args.output,
                        engine=args.engine, kind=args.kind, batch_size=args.batch_size, num_workers=args.workers,
                        overwrite=args.overwrite, wait=args.wait, **options)
    print_report(index.report)
    print(f"index: {index.path} ({index.manifest['engine']} {index.manifest.get('kind', '')}, {len(index)} items)")
    return 0


def index_add(args: argparse.Namespace) -> int:
    from binder.index import Index
    from binder.index.items import check_bulk_options

    check_bulk_options(args.batch_size, args.workers)
    index = Index.open(args.index, load_model(args.model), wait=args.wait)
    print_report(index.add(args.items, batch_size=args.batch_size, num_workers=args.workers, wait=args.wait))
    print(f"index: {index.path} ({len(index)} items)")
    return 0


def index_delete(args: argparse.Namespace) -> int:
    from binder.index import Index

    index = Index.open(args.index, wait=args.wait)
    print(f"deleted {index.delete(args.ids, wait=args.wait)}; {len(index)} items left")
    return 0


def index_info(args: argparse.Namespace) -> int:
    from binder.index import Index

    print(json.dumps(Index.open(args.index, verify=not args.fast).info(), indent=2))
    return 0


def bulk_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes reading files (default 2)")


def _wait_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="while another process writes the same index, wait this long for it (default 600)")


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    index = sub.add_parser("index", help="build and update a persistent index of any modality",
                           description="Build, update and inspect binder indexes.")
    isub = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = isub.add_parser("build", help="embed files, folders or a manifest into a new index")
    build.add_argument("items", nargs="+", help="files, folders, or a manifest (.csv/.jsonl with a path column)")
    build.add_argument("--model", required=True, help="model folder, hf-hub:org/name or imagebind_huge")
    build.add_argument("--modality", default="image", help="what the items are (default image)")
    build.add_argument("-o", "--output", required=True, help="the index folder to write")
    build.add_argument("--engine", default="faiss", help="a registered index engine: faiss (default) or qdrant")
    build.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf", "hnsw"],
                       help="faiss: exact (flat), an inverted file (ivf), HNSW, or auto (exact below 100k items, "
                            "ivf above)")
    build.add_argument("--url", help="qdrant: the server or cluster URL (default: local mode in the index folder)")
    build.add_argument("--collection", help="qdrant: the collection name")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing index at the output path (anything else there is never replaced)")
    bulk_options(build)
    _wait_option(build)
    add = isub.add_parser("add", help="embed more items into an index")
    add.add_argument("index")
    add.add_argument("items", nargs="+")
    add.add_argument("--model", required=True)
    bulk_options(add)
    _wait_option(add)
    delete = isub.add_parser("delete", help="remove items by id")
    delete.add_argument("index")
    delete.add_argument("--ids", required=True, nargs="+", type=int)
    _wait_option(delete)
    info = isub.add_parser("info", help="print an index's description as JSON")
    info.add_argument("index")
    info.add_argument("--fast", action="store_true", help="skip checking the files' digests")
    return {"index build": index_build, "index add": index_add, "index delete": index_delete,
            "index info": index_info}
