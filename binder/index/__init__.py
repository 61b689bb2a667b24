"""Persistent indexes of embeddings of any modality, searched with composed queries.

``binder.Index.build(model, items, modality="image", path=...)``, ``Index.open(path, model)``,
``idx.add(...)``, ``idx.delete(ids)``, ``idx.search(image=..., audio=..., text=..., weights=...,
k=10, where=...)``. See :mod:`binder.index.core`.
"""
from binder.index.core import Index, IndexReport
from binder.index.hits import Hit, Hits
from binder.index.items import EmbedReport, Item, embed_items, gather

__all__ = ["EmbedReport", "Hit", "Hits", "Index", "IndexReport", "Item", "embed_items", "gather"]
