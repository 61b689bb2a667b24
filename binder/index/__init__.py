"""Persistent indexes of embeddings of any modality, searched with composed queries.

``binder.Index.build(model, items, modality="image", path=...)``, ``Index.open(path, model)``,
``idx.add(...)``, ``idx.delete(ids)``, ``idx.search(image=..., audio=..., depth=..., text=...,
weights=..., k=10, where=...)``, ``idx.get(id)``. See :mod:`binder.index.core`; the engines that
store an index are in :mod:`binder.index.engines` (one module each, registered in ``ENGINES``).
"""
from binder.index.core import Index, IndexReport
from binder.index.engines import ENGINES
from binder.index.hits import Hit, Hits
from binder.index.items import EmbedReport, Item, embed_items, gather

__all__ = ["ENGINES", "EmbedReport", "Hit", "Hits", "Index", "IndexReport", "Item", "embed_items", "gather"]
