"""Bulk embedding at scale: millions of files into Parquet parts that a crash does not corrupt.

``binder embed ITEMS -o FOLDER/`` (a folder, not a ``.parquet`` file) cuts the items into parts
of ``--part-size`` (:mod:`binder.parts`): each part is embedded with binder's one embedding loop
(:func:`binder.embedding.embed_inputs`: decoding in DataLoader workers, batches under autocast on
a GPU) and written as ``part-00000.parquet`` (the format of :mod:`binder.index.export`) in one
rename, the files it could not read listed in ``part-00000.skipped.json`` written just before.
A re-run of the same job skips the finished parts; processes launched by ``torchrun`` (or SLURM)
take the parts of their rank, each on its own GPU, and rank 0 writes ``embeddings.json`` (totals,
the model's fingerprint) once every part is there.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from binder.errors import BinderInputError
from binder.files import atomic_write
from binder.index.export import write_parquet
from binder.index.items import Item, check_bulk_options, embed_items
from binder.logs import progress
from binder.parts import PartJob, rank_and_world

log = logging.getLogger(__name__)

SUMMARY = "embeddings.json"
PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_for_rank() -> torch.device:
    """This process's GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def items_digest(items: Sequence[Item]) -> str:
    """SHA-256 of the items' paths, in order (what a re-run must list again)."""
    h = hashlib.sha256()
    for it in items:
        h.update(it.path.encode() + b"\n")
    return h.hexdigest()


def embed_parts(model: Any, modality: str, items: Sequence[Item], folder: "str | Path", part_size: int = 100_000,
                batch_size: int = 64, num_workers: int = 2, precision: str = "fp32",
                show_progress: bool = True) -> Dict[str, Any]:
    """Embed ``items`` into Parquet parts in ``folder`` (this process's share of them).

    Returns:
        On rank 0 (after every rank's parts exist): the totals written to ``embeddings.json``;
        on the other ranks: what this rank embedded.

    Raises:
        BinderInputError: the folder holds another job, or bad options.
    """
    check_bulk_options(batch_size, num_workers)
    if precision not in PRECISIONS:
        raise BinderInputError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    items = list(items)
    spec = {"model": model.fingerprint(modality), "modality": modality, "items": items_digest(items)}
    job = PartJob(Path(folder), len(items), part_size, spec, suffix=".parquet").start()
    rank, world = rank_and_world()
    model.to(device_for_rank())
    autocast = PRECISIONS[precision] if model.device.type == "cuda" else None
    todo = job.todo(rank, world)
    log.info("embedding %d %s items in %d parts; %d left for rank %d of %d", len(items), modality, job.parts, len(todo),
             rank, world)
    embedded = 0
    for p in progress(todo, f"embed {modality} parts", enabled=show_progress, unit="part"):
        a, b = job.bounds(p)
        report = embed_items(model, modality, items[a:b], batch_size, num_workers, show_progress=False,
                             autocast=autocast)
        atomic_write(job.folder / f"part-{p:05d}.skipped.json", json.dumps(report.skipped))
        write_parquet(report, job.path(p), model, modality)
        embedded += report.count
    if rank != 0:
        return {"rank": rank, "embedded": embedded}
    job.wait()
    return summarise(job, model, modality)


def summarise(job: PartJob, model: Any, modality: str) -> Dict[str, Any]:
    """Totals over every part, written to ``embeddings.json``."""
    import pyarrow.parquet as pq

    count = sum(pq.ParquetFile(job.path(p)).metadata.num_rows for p in range(job.parts))
    skipped = []
    for p in range(job.parts):
        extra = job.folder / f"part-{p:05d}.skipped.json"
        skipped += json.loads(extra.read_text()) if extra.is_file() else []
    summary = {"modality": modality, "items": job.count, "embedded": count, "skipped": len(skipped),
               "parts": job.parts, "dim": int(model.anchor.embed_dim), "fingerprint": model.fingerprint(modality),
               "files": [job.path(p).name for p in range(job.parts)]}
    atomic_write(job.folder / SUMMARY, json.dumps(summary, indent=2))
    return {**summary, "skipped_items": skipped}
