"""Embeddings to Parquet (``binder embed``): for users who bring their own search engine.

One row per embedded item: ``path``, its metadata columns, and ``embedding`` as a fixed-size
list of float32 (Arrow's ``FixedSizeList``, which pandas, Polars, DuckDB, LanceDB and Spark read).
The file's key-value metadata records the model's fingerprint, the modality and the size.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from binder.files import atomic_write


def write_parquet(report: Any, path: "str | Path", model: Any, modality: str) -> Path:
    """Write an :class:`~binder.index.items.EmbedReport` to ``path`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    dim = int(report.vectors.shape[1])
    columns = {"path": [it.path for it in report.items]}
    for name in sorted({k for it in report.items for k in it.meta}):
        columns[name] = [it.meta.get(name) for it in report.items]
    table = pa.table(columns)
    flat = pa.array(report.vectors.reshape(-1), type=pa.float32())
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, dim))
    meta = {"binder": json.dumps({"modality": modality, "dim": dim, "fingerprint": model.fingerprint(modality),
                                  "anchor_fingerprint": model.anchor.fingerprint()})}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return atomic_write(path, buffer.getvalue().to_pybytes())
