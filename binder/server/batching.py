"""Dynamic batching for the search page: concurrent queries share one encoder call.

Each request reads and preprocesses its own inputs in a worker thread (in parallel, off the
event loop); the encoder calls go to one :class:`Batcher` thread, which takes every call waiting
for the same modality and input shape, at most ``max_batch`` items, waiting at most
``max_wait`` seconds after the first for others to join, and runs them as one batch (the way
inference servers such as Triton batch dynamically). It waits only while other queries are under
way (:meth:`Batcher.query` counts them), so a query alone never waits; under load a batch forms
while the previous one runs.

:class:`BatchedModel` is the model the page's index searches with: it is the loaded model in
every respect but ``encode``, which goes through the batcher.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from binder.embedding import EmbedMixin
from binder.model import BindModel

log = logging.getLogger(__name__)

MAX_BATCH = 32  # inputs per encoder call
MAX_WAIT = 0.005  # seconds the first call of a batch waits for others


class Batcher:
    """One thread that runs ``model.encode`` on batches gathered from concurrent callers."""

    def __init__(self, model: Any, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT) -> None:
        self.model, self.max_batch, self.max_wait = model, int(max_batch), float(max_wait)
        self._queue: "queue.Queue[Optional[Tuple[str, torch.Tensor, Future]]]" = queue.Queue()
        self._held: List[Tuple[str, torch.Tensor, Future]] = []  # taken, for a later batch
        self.batches = self.items = 0  # counters: encoder calls made, inputs embedded
        self.active = 0  # queries under way (reading, preprocessing or waiting for their embeddings)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="binder-batcher", daemon=True)
        self._thread.start()

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """``model.encode(modality, x)`` in a batch with other callers' inputs (blocks until done)."""
        if self.max_batch <= 1:
            with torch.no_grad():
                return self.model.encode(modality, x)
        done: Future = Future()
        self._queue.put((modality, x, done))
        return done.result()

    @contextlib.contextmanager
    def query(self) -> Iterator[None]:
        """Count a query as under way while it runs: the batcher waits for others only while
        there are others."""
        with self._lock:
            self.active += 1
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # ----- the batching thread ------------------------------------------------------------------

    def _next(self, timeout: Optional[float]) -> Optional[Tuple[str, torch.Tensor, Future]]:
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _gather(self, first: Tuple[str, torch.Tensor, Future]) -> List[Tuple[str, torch.Tensor, Future]]:
        """``first`` and the waiting calls of the same modality and shape, up to the limits."""
        key = (first[0], tuple(first[1].shape[1:]))
        batch, size = [first], first[1].shape[0]
        keep = []
        for held in self._held:  # calls set aside earlier come first
            if (held[0], tuple(held[1].shape[1:])) == key and size + held[1].shape[0] <= self.max_batch:
                batch.append(held)
                size += held[1].shape[0]
            else:
                keep.append(held)
        self._held = keep
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch and len(batch) < self.active:  # others under way may join
            call = self._next(deadline - time.monotonic())
            if call is None:
                break
            if (call[0], tuple(call[1].shape[1:])) == key and size + call[1].shape[0] <= self.max_batch:
                batch.append(call)
                size += call[1].shape[0]
            else:
                self._held.append(call)
        return batch

    def _run(self) -> None:
        while True:
            first = self._held.pop(0) if self._held else self._queue.get()
            if first is None:
                return
            batch = self._gather(first)
            try:
                with torch.no_grad():
                    z = self.model.encode(batch[0][0], torch.cat([x for _, x, _ in batch]))
                self.batches, self.items = self.batches + 1, self.items + sum(len(x) for _, x, _ in batch)
            except BaseException as err:  # each caller gets the error (its own request answers it)
                for _, _, done in batch:
                    done.set_exception(err)
                continue
            start = 0
            for _, x, done in batch:
                done.set_result(z[start : start + len(x)])
                start += len(x)


class BatchedModel(EmbedMixin):
    """The loaded model, its ``encode`` batched across concurrent requests (:class:`Batcher`)."""

    training = False

    def __init__(self, model: Any, batcher: Batcher) -> None:
        self.model, self.batcher = model, batcher

    def __getattr__(self, name: str) -> Any:  # everything else is the model's
        if name in ("model", "batcher"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def encode(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.batcher.encode(modality, x)

    def item_preprocessor(self, modality: str) -> Any:
        return self.model.item_preprocessor(modality)

    def eval(self) -> "BatchedModel":
        return self

    def train(self, mode: bool = True) -> "BatchedModel":
        return self

    def compose(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with self.batcher.query():
            return BindModel.compose(self, *args, **kwargs)

    @property
    def stats(self) -> Dict[str, int]:
        return {"batches": self.batcher.batches, "items": self.batcher.items}
