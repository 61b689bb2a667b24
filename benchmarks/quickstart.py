"""The README's first command, timed from a fresh clone with an empty binder cache, for one or
more revisions side by side (today's against a baseline, run back to back on the same machine).

For each revision: ``git clone`` of this repository at that revision into a temporary folder,
then the first command of its README's quick start block, exactly as written, with
``BINDER_CACHE`` pointing at a new empty folder (so the digits anchor is built) and the data
found as users find it (``../shared/data`` beside the clone, or ``BINDER_DATA``). Package
caches (pip's, uv's) are left as they are: warm them once beforehand so both revisions are
timed on the same footing. Prints the wall time of the whole command, where it went (install,
anchor, audio: from the run's own timestamped log lines; "install" runs until binder's first
line, so it includes starting Python and importing binder), the anchor's and the emergent
zero-shot top-1, the ratio to the first revision, and writes ``benchmarks/quickstart.json``.

    python benchmarks/quickstart.py 6ae1cc2 HEAD
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
MARKS = {"anchor_start": "building it first", "anchor_done": "anchor:  ", "audio_done": "saved model to"}


def first_command(readme: str) -> str:
    """The first line of the README's first ``bash`` block (the quick start's install + run)."""
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    if block is None:
        raise SystemExit("the README has no ```bash block")
    return block.group(1).strip().splitlines()[0]


def stamped_run(command: str, cwd: Path, env: Dict[str, str]) -> List[tuple]:
    """Run ``command`` in bash, returning (seconds since start, line) for every output line."""
    start = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in proc.stdout]
    if proc.wait() != 0:
        tail = "\n".join(line for _, line in lines[-20:])
        raise SystemExit(f"the quick start failed in {cwd}:\n{tail}")
    return lines + [(time.perf_counter() - start, "<exit>")]


def summarise(lines: List[tuple]) -> Dict[str, float]:
    """Phase times and results from the stamped output."""
    def first(text: str) -> float:
        return next((t for t, line in lines if text in line), float("nan"))

    def top1(row: str) -> float:
        hit = next((line for _, line in lines if line.strip().startswith(row)), "")
        numbers = re.findall(r"\d+\.\d+", hit)
        return float(numbers[1]) if len(numbers) > 1 else float("nan")

    total = lines[-1][0]
    train_start = next((t for t, line in lines if line.startswith("binder: ")), float("nan"))
    anchor_done = first(MARKS["anchor_done"])
    return {"total_s": total, "install_s": train_start, "anchor_s": anchor_done - first(MARKS["anchor_start"]),
            "audio_s": first(MARKS["audio_done"]) - anchor_done, "anchor_top1": top1("image->text (anchor)"),
            "emergent_top1": top1("audio->text (emergent)")}


def time_revision(rev: str, work: Path, caches: Path) -> Dict[str, float]:
    """Clone ``rev`` into ``work`` (beside the data) and time its README's first command."""
    clone = work / f"binder-quickstart-{rev.replace('/', '_')}-{os.getpid()}"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
    command = first_command((clone / "README.md").read_text())
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
    env = {**os.environ, "BINDER_CACHE": str(caches / f"cache-{rev}")}
    env.pop("VIRTUAL_ENV", None)
    print(f"== {rev}: {command}", file=sys.stderr)
    result = {"revision": rev, "commit": sha.strip(), "command": command,
              **summarise(stamped_run(command, clone, env))}
    shutil.rmtree(clone, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions; the first is the baseline")
    parser.add_argument("--work", default=str(REPO.parent), help="where to clone (default: beside this "
                                                                 "checkout, so ../shared/data resolves as in it)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("quickstart.json")))
    args = parser.parse_args()
    caches = Path(tempfile.mkdtemp(prefix="binder-quickstart-caches-"))
    rows = [time_revision(rev, Path(args.work), caches) for rev in args.revisions]
    base = rows[0]["total_s"]
    print(f"{'revision':<12} {'total':>8} {'install':>8} {'anchor':>8} {'audio':>8} {'anchor%':>8} "
          f"{'emergent%':>9} {'vs first':>9}")
    for r in rows:
        r["speedup"] = base / r["total_s"]
        print(f"{r['revision']:<12} {r['total_s']:8.1f} {r['install_s']:8.1f} {r['anchor_s']:8.1f} "
              f"{r['audio_s']:8.1f} {r['anchor_top1']:8.1f} {r['emergent_top1']:9.1f} {r['speedup']:8.2f}x")
    Path(args.out).write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2))
    shutil.rmtree(caches, ignore_errors=True)


if __name__ == "__main__":
    main()
