"""The Free Spoken Digit Dataset (Jakobovski et al.): ``{digit}_{speaker}_{take}.wav``, 8 kHz."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np

from binder.datasets.sources import SOURCES, DigitsSource
from binder.errors import BinderInputError

_NAME = re.compile(r"^(\d)_([a-z][a-z0-9]*)_(\d+)\.wav$")


@dataclass(frozen=True)
class Recording:
    """One FSDD recording."""

    path: Path
    digit: int
    speaker: str
    take: int
    synthetic: bool = False  # a text-to-speech clip (training only), not a recording


def list_recordings(root: "str | Path") -> List[Recording]:
    """All recordings under ``root/recordings`` (or ``root`` itself), sorted by file name."""
    root = Path(root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise BinderInputError(f"FSDD folder {str(folder)!r} does not exist")
    recs = []
    for path in sorted(folder.glob("*.wav")):
        m = _NAME.match(path.name)
        if m:
            recs.append(Recording(path, int(m.group(1)), m.group(2), int(m.group(3))))
    if not recs:
        raise BinderInputError(f"FSDD folder {str(folder)!r} holds no {{digit}}_{{speaker}}_{{take}}.wav files")
    return recs


def digits_recordings(world: Any, split: str) -> Tuple[List[Path], np.ndarray]:
    """The digits world's audio (its :class:`~binder.datasets.sources.DigitsSource`): the FSDD recordings of
    ``split`` (held out by take or speaker, see ``DigitsConfig``) and their digits."""
    recs = world.recordings_of(split)
    return [r.path for r in recs], np.array([r.digit for r in recs])


SOURCES.register("audio", DigitsSource(recordings=digits_recordings))
