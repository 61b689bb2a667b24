"""The retrieval commands of the ``binder`` console script.

``binder index build|add|delete|info``, ``binder search``, ``binder embed`` and ``binder serve``:
thin argparse front ends over :class:`binder.Index`, :func:`binder.index.items.embed_items` and
:mod:`binder.server`. Results go to stdout (a table, or JSON with ``--json``); progress and
logs to stderr; a user error is one line ``error: ...`` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from binder.errors import BinderInputError

log = logging.getLogger(__name__)

QUERY_MODALITIES = ("image", "audio", "text")


def _model(source: str) -> Any:
    from binder.io import load

    return load(source)


def _weights(text: Optional[str]) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise BinderInputError(f"--weights must be comma-separated numbers like 0.5,0.5, got {text!r}") from None


def _where(text: Optional[str]) -> Any:
    """``--where``: a JSON object (``{"speaker": "theo"}``) or an SQL expression."""
    if not text or not text.lstrip().startswith("{"):
        return text
    try:
        where = json.loads(text)
    except json.JSONDecodeError as err:
        raise BinderInputError(f"--where {text!r} is not valid JSON ({err.msg} at character {err.pos}): give a JSON "
                               "object like '{\"speaker\": \"jackson\"}' or an SQL expression like \"digit >= 5\"") \
            from None
    if not isinstance(where, dict):
        raise BinderInputError(f"--where must be a JSON object or an SQL expression, got {text!r}")
    return where


def print_report(report: Any, out: Any = None) -> None:
    """The number indexed and every skipped file with its reason."""
    out = out or sys.stdout
    print(f"indexed {report.indexed}", file=out)
    if report.skipped:
        print(f"skipped {len(report.skipped)}:", file=out)
        for path, reason in report.skipped:
            print(f"  {path}: {reason}", file=out)


# ----------------------------------------------------------------------------------------------
# index build / add / delete / info
# ----------------------------------------------------------------------------------------------

def index_build(args: argparse.Namespace) -> int:
    from binder.index import Index

    from binder.index.core import check_target
    from binder.index.items import check_bulk_options

    check_bulk_options(args.batch_size, args.workers)
    check_target(Path(args.output).expanduser().absolute(), args.overwrite)  # before loading the model
    model = _model(args.model)
    options = {k: v for k, v in (("url", args.url), ("collection", args.collection)) if v}
    index = Index.build(model, args.items, modality=args.modality, path=args.output, engine=args.engine,
                        kind=args.kind, batch_size=args.batch_size, num_workers=args.workers,
                        overwrite=args.overwrite, wait=args.wait, **options)
    print_report(index.report)
    print(f"index: {index.path} ({index.manifest['engine']} {index.manifest.get('kind', '')}, {len(index)} items)")
    return 0


def index_add(args: argparse.Namespace) -> int:
    from binder.index import Index

    from binder.index.items import check_bulk_options

    check_bulk_options(args.batch_size, args.workers)
    index = Index.open(args.index, _model(args.model), wait=args.wait)
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


# ----------------------------------------------------------------------------------------------
# search / embed / serve
# ----------------------------------------------------------------------------------------------

def search(args: argparse.Namespace) -> int:
    from binder.index import Index

    query = {m: getattr(args, m) for m in QUERY_MODALITIES if getattr(args, m) is not None}
    if not query:
        raise BinderInputError("give a query: --image FILE, --audio FILE and/or --text TEXT")
    from binder.index.core import check_k

    check_k(args.k)
    where = _where(args.where)
    index = Index.open(args.index, _model(args.model))
    hits = index.search(**query, weights=_weights(args.weights), k=args.k, where=where)
    records = hits.to_records()
    if args.html:
        from binder.files import atomic_write
        from binder.server.render import results_page

        atomic_write(args.html, results_page(f"binder search: {index.path.name}", query, records))
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps({"query": query, "weights": _weights(args.weights), "k": args.k, "hits": records}, indent=2))
    else:
        print_table(records)
    return 0


def print_table(records: List[Dict[str, Any]]) -> None:
    """rank, score, path, metadata: one line per hit."""
    print(f"{'rank':>4}  {'score':>7}  path  metadata")
    for r in records:
        meta = " ".join(f"{k}={v}" for k, v in r["metadata"].items())
        print(f"{r['rank']:>4}  {r['score']:>7.4f}  {r['path']}  {meta}")


def embed(args: argparse.Namespace) -> int:
    from binder.index.export import write_parquet
    from binder.index.items import check_bulk_options, embed_items, gather

    check_bulk_options(args.batch_size, args.workers)
    model = _model(args.model)
    report = embed_items(model, args.modality, gather(args.items, args.modality), args.batch_size, args.workers)
    write_parquet(report, args.output, model, args.modality)
    print(f"embedded {report.count} {args.modality} item(s) -> {args.output}")
    if report.skipped:
        print(f"skipped {len(report.skipped)}:")
        for path, reason in report.skipped:
            print(f"  {path}: {reason}")
    return 0


def serve(args: argparse.Namespace) -> int:
    from binder.server import run_server

    run_server(args.index, args.model, host=args.host, port=args.port)
    return 0


# ----------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------

def _bulk_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes reading files (default 2)")


def _wait_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=float, default=600.0, metavar="SECONDS",
                   help="while another process writes the same index, wait this long for it (default 600)")


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``index``, ``search``, ``embed`` and ``serve`` to the subparsers; returns their handlers
    by (sub)command name."""
    index = sub.add_parser("index", help="build and update a persistent index of any modality",
                           description="Build, update and inspect binder indexes.")
    isub = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = isub.add_parser("build", help="embed files, folders or a manifest into a new index")
    build.add_argument("items", nargs="+", help="files, folders, or a manifest (.csv/.jsonl with a path column)")
    build.add_argument("--model", required=True, help="model folder, hf-hub:org/name or imagebind_huge")
    build.add_argument("--modality", default="image", help="what the items are (default image)")
    build.add_argument("-o", "--output", required=True, help="the index folder to write")
    build.add_argument("--engine", default="faiss", choices=["faiss", "qdrant"])
    build.add_argument("--kind", default="auto", choices=["auto", "flat", "ivf", "hnsw"],
                       help="faiss: exact (flat), an inverted file (ivf), HNSW, or auto (exact below 100k items, "
                            "ivf above)")
    build.add_argument("--url", help="qdrant: the server or cluster URL (default: local mode in the index folder)")
    build.add_argument("--collection", help="qdrant: the collection name")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing index at the output path (anything else there is never replaced)")
    _bulk_options(build)
    _wait_option(build)
    add = isub.add_parser("add", help="embed more items into an index")
    add.add_argument("index")
    add.add_argument("items", nargs="+")
    add.add_argument("--model", required=True)
    _bulk_options(add)
    _wait_option(add)
    delete = isub.add_parser("delete", help="remove items by id")
    delete.add_argument("index")
    delete.add_argument("--ids", required=True, nargs="+", type=int)
    _wait_option(delete)
    info = isub.add_parser("info", help="print an index's description as JSON")
    info.add_argument("index")
    info.add_argument("--fast", action="store_true", help="skip checking the files' digests")

    srch = sub.add_parser("search", help="search an index with an image, a sound and/or text",
                          description="Search an index with a query composed of any modalities.")
    srch.add_argument("index")
    srch.add_argument("--model", required=True)
    for m in QUERY_MODALITIES:
        srch.add_argument(f"--{m}", help=f"the {m} query ({'a string' if m == 'text' else 'a file'})")
    srch.add_argument("--weights", help="contributions in the order image,audio,text of the given ones, e.g. 0.5,0.5")
    srch.add_argument("-k", type=int, default=10, help="hits (default 10)")
    srch.add_argument("--where", help='metadata filter: JSON like \'{"speaker": "jackson"}\' or SQL like "digit >= 5"')
    srch.add_argument("--json", action="store_true", help="print the hits as JSON")
    srch.add_argument("--html", help="also write a page of the hits (thumbnails, audio players) to this file")

    emb = sub.add_parser("embed", help="embed files into a Parquet file (bring your own search engine)")
    emb.add_argument("items", nargs="+")
    emb.add_argument("--model", required=True)
    emb.add_argument("--modality", required=True)
    emb.add_argument("-o", "--output", required=True, help="the .parquet file to write")
    _bulk_options(emb)

    srv = sub.add_parser("serve", help="a local search page for an index")
    srv.add_argument("index")
    srv.add_argument("--model", required=True)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8765)
    return {"index build": index_build, "index add": index_add, "index delete": index_delete,
            "index info": index_info, "search": search, "embed": embed, "serve": serve}


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
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
