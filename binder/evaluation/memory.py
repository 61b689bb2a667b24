"""An evaluation dataset held in memory: raw inputs with integer labels (the digits world's
held-out sets, or any list a caller has), evaluated by the same code as the datasets on disk."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

from binder.evaluation.base import CLASSIFICATION, ProtocolInfo, Record, Split


class InMemory:
    """Zero-shot classification of ``inputs`` (anything the model's preprocessor takes) with
    ``labels`` (class indices into ``classnames``) and prompt ``templates``."""

    title = "in-memory dataset"
    task = CLASSIFICATION
    splits = ("test",)
    default_split = "test"
    layout = "inputs and labels given in Python"
    needs_root = False

    def __init__(self, name: str, modality: str, inputs: List[Any], labels: Sequence[int], classnames: Sequence[str],
                 templates: Sequence[str], source: str = "binder's held-out set") -> None:
        self.name, self.modality, self.inputs, self.labels = name, modality, list(inputs), [int(v) for v in labels]
        self.classnames, self.templates, self.source = list(classnames), list(templates), source

    def read(self, root: Optional[Path], split: str) -> Split:
        records = [Record(id=str(i), source=i, label=lab,
                          path=str(x) if isinstance(x, (str, Path)) else None)
                   for i, (x, lab) in enumerate(zip(self.inputs, self.labels))]
        protocol = ProtocolInfo(name=f"{self.name}-zero-shot", version="1", source=self.source,
                                choices={"prompts": "the dataset's templates, ensembled (CLIP)"})
        return Split(self.name, split, self.modality, self.task, records, protocol, classnames=self.classnames,
                     templates=self.templates)

    def load(self, record: Record) -> Any:
        return self.inputs[record.source]
