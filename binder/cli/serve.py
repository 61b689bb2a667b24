"""``binder serve IDX --model M``: the search page (:mod:`binder.server`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict


def serve(args: argparse.Namespace) -> int:
    from binder.server import run_server

    run_server(args.index, args.model, host=args.host, port=args.port, max_batch=args.max_batch,
               max_wait=args.max_wait_ms / 1000, workers=args.workers)
    return 0


def add_commands(sub: Any) -> Dict[str, Callable[[argparse.Namespace], int]]:
    srv = sub.add_parser("serve", help="a local search page for an index")
    srv.add_argument("index")
    srv.add_argument("--model", required=True)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8765)
    srv.add_argument("--max-batch", type=int, default=32, help="inputs per batched encoder call (1: no batching)")
    srv.add_argument("--workers", type=int, default=1,
                     help="server processes sharing the port, each with its own model (use the machine's cores)")
    srv.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a query waits for others to batch with")
    return {"serve": serve}
