"""Writers of one index run as separate processes by tests/test_index_safety.py.

``python racers.py add INDEX COUNT SEED GO [WAIT]``: open INDEX, wait until the file GO exists
(so that all racers start together; each touches GO.SEED.ready once it has the index open), add
COUNT random unit vectors with paths ``SEED-i``.
``python racers.py delete INDEX ID GO``: the same for deleting one id.
``python racers.py build INDEX COUNT SEED GO MODEL ENGINE``: rebuild INDEX (overwrite) from COUNT vectors.
``python racers.py hold INDEX SECONDS READY``: open INDEX (a Qdrant local-mode index stays
claimed while open), touch READY, sleep, close.
The exit status is 0 on success, 2 for a binder error (printed as one line), 1 otherwise.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _go(flag: str) -> None:
    while not Path(flag).exists():
        time.sleep(0.005)


def main(argv: list) -> int:
    from binder.errors import BinderError
    from binder.index import EmbedReport, Index, Item

    action, path = argv[0], argv[1]
    try:
        if action == "add":
            count, seed, flag = int(argv[2]), int(argv[3]), argv[4]
            wait = float(argv[5]) if len(argv) > 5 else 600.0
            index = Index.open(path, wait=wait)
            Path(f"{flag}.{seed}.ready").touch()
            rng = np.random.default_rng(seed)
            vectors = rng.normal(size=(count, index.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            report = EmbedReport([Item(f"{seed}-{i}", {"writer": seed}) for i in range(count)], vectors, [])
            _go(flag)
            index.add_embeddings(report, wait=wait)
            index.close()
        elif action == "build":
            import binder

            count, seed, flag = int(argv[2]), int(argv[3]), argv[4]
            model = binder.load(argv[5])
            rng = np.random.default_rng(seed)
            vectors = rng.normal(size=(count, model.anchor.embed_dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            report = EmbedReport([Item(f"{seed}-{i}", {"writer": seed}) for i in range(count)], vectors, [])
            Path(f"{flag}.{seed}.ready").touch()
            _go(flag)
            Index.from_embeddings(model, report, "image", path, engine=argv[6], overwrite=True).close()
        elif action == "delete":
            index = Index.open(path)
            _go(argv[3])
            index.delete([int(argv[2])])
        elif action == "hold":
            index = Index.open(path)
            Path(argv[3]).touch()
            time.sleep(float(argv[2]))
            index.close()
    except BinderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
