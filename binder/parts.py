"""Jobs cut into parts that a crash cannot corrupt and a re-run does not repeat.

Bulk work over millions of items (``binder embed`` over a manifest, ``binder cache`` over the
paired images) is cut into parts of ``part_size`` items. Each part is written on its own, through
a temporary file and one rename (:func:`binder.files.atomic_write`), so a part file is complete
or absent; ``job.json`` in the output folder records what the job computes (model, inputs, part
size), and a re-run with the same job skips the finished parts while a different job is refused.
Processes split the parts: part ``i`` belongs to rank ``i % world`` (ranks and world size come
from ``torchrun`` or SLURM, :func:`rank_and_world`), so every GPU of a node or a cluster works on
its own parts without talking to the others.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from binder.errors import BinderInputError
from binder.files import atomic_write, exclusive

log = logging.getLogger(__name__)

JOB_FILE = "job.json"


def rank_and_world() -> Tuple[int, int]:
    """(global rank, world size) of this process under torchrun (``RANK``/``WORLD_SIZE``) or
    SLURM (``SLURM_PROCID``/``SLURM_NTASKS``); (0, 1) when launched alone."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if os.environ.get(rank_key) is not None and os.environ.get(world_key) is not None:
            rank, world = int(os.environ[rank_key]), int(os.environ[world_key])
            if not 0 <= rank < world:
                raise BinderInputError(f"{rank_key}={rank} is not below {world_key}={world}")
            return rank, world
    return 0, 1


@dataclass
class PartJob:
    """``count`` items in parts of ``part_size``, written as ``part-00000<suffix>``, ... in ``folder``.

    Args:
        folder: The output folder (created).
        count: Items in the job.
        part_size: Items per part.
        spec: What the job computes (JSON-able): a re-run must name the same.
        suffix: The parts' file suffix.
    """

    folder: Path
    count: int
    part_size: int
    spec: Dict[str, Any] = field(default_factory=dict)
    suffix: str = ".npz"

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).expanduser().absolute()
        if isinstance(self.part_size, bool) or not isinstance(self.part_size, int) or self.part_size < 1:
            raise BinderInputError(f"part size must be a positive whole number, got {self.part_size!r}")
        if self.count < 1:
            raise BinderInputError("the job has no items")

    @property
    def record(self) -> Dict[str, Any]:
        """What ``job.json`` holds."""
        return {"count": self.count, "part_size": self.part_size, "parts": self.parts, "spec": self.spec}

    @property
    def parts(self) -> int:
        """Number of parts."""
        return -(-self.count // self.part_size)

    def start(self) -> "PartJob":
        """Create the folder and its ``job.json``, or check that an existing one is this job.

        Raises:
            BinderInputError: the folder holds another job (or is not a job folder at all).
        """
        if self.folder.exists() and not self.folder.is_dir():
            raise BinderInputError(f"output {str(self.folder)!r} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        with exclusive(self.folder / JOB_FILE, f"job {str(self.folder)!r}"):
            path = self.folder / JOB_FILE
            if not path.is_file():
                stray = [p.name for p in self.folder.iterdir() if not p.name.startswith(".")]
                if stray:
                    raise BinderInputError(f"output folder {str(self.folder)!r} is not empty ({stray[:3]}) and holds "
                                           f"no {JOB_FILE}: choose a new or empty folder")
                atomic_write(path, json.dumps(self.record, indent=2, sort_keys=True))
                return self
            try:
                old = json.loads(path.read_text())
            except ValueError:
                raise BinderInputError(f"{str(path)!r} is not valid JSON: remove the folder and run again") from None
        if old != json.loads(json.dumps(self.record, sort_keys=True)):
            differ = sorted(k for k in set(old.get("spec", {})) | set(self.spec)
                            if old.get("spec", {}).get(k) != self.spec.get(k))
            other = [k for k in ("count", "part_size") if old.get(k) != self.record[k]]
            raise BinderInputError(f"output folder {str(self.folder)!r} holds another job ({', '.join(other + differ)} "
                                   "differ): use a new folder, or remove this one to start over")
        return self

    def path(self, i: int) -> Path:
        """The file of part ``i``."""
        return self.folder / f"part-{i:05d}{self.suffix}"

    def bounds(self, i: int) -> Tuple[int, int]:
        """Item range [a, b) of part ``i``."""
        return i * self.part_size, min(self.count, (i + 1) * self.part_size)

    def done(self) -> List[int]:
        """Parts whose files exist."""
        return [i for i in range(self.parts) if self.path(i).is_file()]

    def todo(self, rank: int = 0, world: int = 1) -> List[int]:
        """This rank's parts that are not written yet."""
        return [i for i in range(rank, self.parts, world) if not self.path(i).is_file()]

    def write(self, i: int, data: bytes) -> Path:
        """Write part ``i`` atomically."""
        return atomic_write(self.path(i), data)

    def wait(self, timeout: float = 24 * 3600.0, poll: float = 2.0) -> None:
        """Wait until every part exists (other ranks still writing theirs).

        Raises:
            BinderInputError: parts still missing after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while len(self.done()) < self.parts:
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.parts)) - set(self.done()))
                raise BinderInputError(f"job {str(self.folder)!r}: parts {missing[:5]} were not written within "
                                       f"{timeout:g} s; run the job again to finish them")
            time.sleep(poll)
