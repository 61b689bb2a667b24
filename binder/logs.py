"""Keeping the console readable: third-party noise off, one line on what a run uses.

open_clip logs through the root logger ("Parsing model identifier ..." for every model and
tokenizer built, "No pretrained weights loaded ..." for an anchor that is about to be trained);
Lightning prints tips, device summaries and deprecation notices. None of it tells a binder user
anything, so it is filtered here; warnings and errors still pass.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from typing import Any, Iterator, List

NOISY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.utilities.model_summary")


class _OpenClipInfo(logging.Filter):
    """Drops open_clip's INFO records and its 'initialized randomly' warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}open_clip{os.sep}" not in record.pathname:
            return True
        return record.levelno >= logging.ERROR or (
            record.levelno >= logging.WARNING and "initialized randomly" not in record.getMessage())


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """Within the block, open_clip's informational logging is dropped."""
    flt = _OpenClipInfo()
    logging.root.addFilter(flt)
    try:
        yield
    finally:
        logging.root.removeFilter(flt)


def quiet_third_party() -> None:
    """Silence Lightning's tips and summaries and known harmless warnings for a training run."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (r".*module\(s\) in eval mode.*",  # the frozen anchor is in eval mode on purpose
                    r".*does not have many workers.*", r".*LeafSpec.*", r".*treespec.*",
                    r".*Checkpoint directory .* exists and is not empty.*",
                    r".*The number of training batches .* is smaller than the logging interval.*",
                    r".*overridden `on_after_batch_transfer` in `LightningModule`.*"):  # binder's device features
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="timm")


def progress(iterable: Any, desc: str, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` on a terminal only (none in log files or pipes), removed when
    done, so no bar fragments end up in logs."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=None if enabled else True, leave=False, **kwargs)


class _ThreadRecords(logging.Handler):
    """Collects the messages of WARNING and above emitted by one thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread, self.messages = threading.get_ident(), []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def captured_warnings(logger: str = "binder") -> Iterator[List[str]]:
    """``with captured_warnings() as messages:`` the warnings binder logs in this thread within the
    block (a truncated file read as far as it goes, ...), for callers that show them to a user
    who sees no log (the search page). They are still logged as usual."""
    handler = _ThreadRecords()
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield handler.messages
    finally:
        target.removeHandler(handler)
