"""``binder shards pack|info``: streaming shards of (image, X) pairs (:mod:`binder.datasets.shards`)."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Dict


def shards_pack(args: argparse.Namespace) -> int:
    from binder.datasets.shards import pack

    meta = pack(args.manifest, args.output, args.modality, cache=args.cache, chunk_mb=args.chunk_mb,
                workers=args.workers)
    kind = f"cached anchor embeddings ({meta['views']} view(s))" if meta["anchor_cache"] else "image files"
    print(f"packed {meta['count']} {meta['modality']} pairs with {kind} -> {args.output}")
    for reason, n in meta["skipped"].items():
        print(f"  not packed: {n} ({reason})")
    print(f"train with: binder train modality={meta['modality']} data=shards data.path={args.output}")
    return 0


def shards_info(args: argparse.Namespace) -> int:
    from binder.datasets.shards import read_meta

    options = {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}
    print(json.dumps(read_meta(args.path, options), indent=2))
    return 0


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    shards = sub.add_parser("shards", help="pack a manifest of pairs into streaming shards (local or S3)",
                            description="Streaming shards of (image, X) pairs for data=shards.")
    ssub = shards.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    pk = ssub.add_parser("pack", help="pack the pairs of a manifest into shards")
    pk.add_argument("manifest", help="CSV or .jsonl of pairs: image, <modality>, optional id and label columns")
    pk.add_argument("-o", "--output", required=True, help="a new folder for the shards")
    pk.add_argument("--modality", required=True, help="the bound modality of the pairs (its column)")
    pk.add_argument("--cache", help="an anchor cache (binder cache) whose embeddings replace the image files")
    pk.add_argument("--chunk-mb", type=int, default=64, help="shard chunk size in MB (default 64)")
    pk.add_argument("--workers", type=int, default=1, help="packing processes (default 1)")
    info = ssub.add_parser("info", help="what a shard folder or s3:// prefix holds")
    info.add_argument("path")
    info.add_argument("--endpoint-url", help="an S3-compatible store's endpoint")
    return {"shards pack": shards_pack, "shards info": shards_info}
