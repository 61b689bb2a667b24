"""``binder search`` (a query of any modalities the model embeds) and ``binder embed`` (files to
Parquet). The query options are one per modality: ``--image``, ``--text`` and one for every
registered modality, plugins included (``--depth scan.npy``, ``--tactile press.npy``), named
without importing a modality module."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Dict, List, Optional

from binder.cli.index import bulk_options, load_model
from binder.errors import BinderInputError


def parse_weights(text: Optional[str], query: List[str]) -> Any:
    """``--weights``: numbers in the order of the query's modalities (``0.5,0.5``) or by name
    (``image=0.7,audio=0.3``)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            return {name.strip(): float(value) for name, value in (p.split("=", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise BinderInputError(f"--weights must be numbers like 0.5,0.5 (in the order {','.join(query)}) or "
                               f"name=number pairs like image=0.7,audio=0.3, got {text!r}") from None


def parse_where(text: Optional[str]) -> Any:
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


def query_of(args: argparse.Namespace) -> Dict[str, Any]:
    """``{modality: input}`` of the query options given, in the order image, bound modalities, text."""
    query = {m: getattr(args, m) for m in query_modalities() if getattr(args, m, None) is not None}
    if not query:
        raise BinderInputError("give a query: --image FILE, --text TEXT, or --<modality> FILE for any modality the "
                               f"model embeds ({', '.join('--' + m for m in query_modalities())})")
    return query


def search(args: argparse.Namespace) -> int:
    from binder.enrollment import Enrollment
    from binder.index import Index
    from binder.index.core import check_k

    query = query_of(args)
    weights = parse_weights(args.weights, list(query))
    check_k(args.k)
    where = parse_where(args.where)
    model = load_model(args.model)
    enrollments = [Enrollment.load(path, model=model) for path in args.enrollment or ()]
    index = Index.open(args.index, model)
    records = index.search(**query, weights=weights, k=args.k, where=where, enrollments=enrollments).to_records()
    if args.html:
        from binder.files import atomic_write
        from binder.server.render import results_page

        atomic_write(args.html, results_page(f"binder search: {index.path.name}", query, records))
        print(f"wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps({"query": query, "weights": weights, "k": args.k, "hits": records}, indent=2))
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
    if not args.output.lower().endswith(".parquet"):
        return embed_folder(args)
    model = load_model(args.model)
    report = embed_items(model, args.modality, gather(args.items, args.modality), args.batch_size, args.workers)
    write_parquet(report, args.output, model, args.modality)
    print(f"embedded {report.count} {args.modality} item(s) -> {args.output}")
    if report.skipped:
        print(f"skipped {len(report.skipped)}:")
        for path, reason in report.skipped:
            print(f"  {path}: {reason}")
    return 0


def embed_folder(args: argparse.Namespace) -> int:
    """``binder embed ... -o FOLDER``: Parquet parts, crash-safe, resumable, split over torchrun's ranks."""
    from binder.index.bulk import embed_parts
    from binder.index.items import gather

    items = gather(args.items, args.modality)  # before loading the model: a bad path fails fast
    done = embed_parts(load_model(args.model), args.modality, items, args.output, part_size=args.part_size,
                       batch_size=args.batch_size, num_workers=args.workers, precision=args.precision)
    if "embedded" in done and "parts" in done:
        print(f"embedded {done['embedded']} of {done['items']} {args.modality} item(s) in {done['parts']} part(s) "
              f"-> {args.output}")
        for path, reason in done["skipped_items"][:20]:
            print(f"  skipped {path}: {reason}")
    return 0


def query_modalities() -> List[str]:
    from binder.registry import modality_names
    from binder.types import IMAGE, TEXT

    return [IMAGE, *modality_names(), TEXT]


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    srch = sub.add_parser("search", help="search an index with a query of any modalities the model embeds",
                          description="Search an index with a query composed of any modalities.")
    srch.add_argument("index")
    srch.add_argument("--model", required=True)
    for m in query_modalities():
        srch.add_argument(f"--{m}", help=f"the {m} query ({'a string' if m == 'text' else 'a file'})")
    srch.add_argument("--weights", help="contributions: numbers in the order image, other modalities, text of the "
                                        "given ones (0.5,0.5), or by name (image=0.7,audio=0.3)")
    srch.add_argument("-k", type=int, default=10, help="hits (default 10)")
    srch.add_argument("--where", help='metadata filter: JSON like \'{"speaker": "jackson"}\' or SQL like "digit >= 5"')
    srch.add_argument("--enrollment", action="append", metavar="FILE",
                      help="a binder enroll file: correct the query's embedding of its modality for its source "
                           "(e.g. the query's speaker); repeatable")
    srch.add_argument("--json", action="store_true", help="print the hits as JSON")
    srch.add_argument("--html", help="also write a page of the hits (thumbnails, audio players) to this file")
    emb = sub.add_parser("embed", help="embed files into a Parquet file (bring your own search engine)")
    emb.add_argument("items", nargs="+")
    emb.add_argument("--model", required=True)
    emb.add_argument("--modality", required=True)
    emb.add_argument("-o", "--output", required=True,
                     help="a .parquet file, or a folder of Parquet parts (crash-safe: a re-run skips finished parts; "
                          "torchrun splits the parts over its processes)")
    emb.add_argument("--part-size", type=int, default=100_000, help="items per part, with a folder (default 100000)")
    emb.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                     help="autocast of the encoders on a GPU (default fp32)")
    bulk_options(emb)
    return {"search": search, "embed": embed}
