"""Dynamic batching of the search page: concurrent queries share encoder calls, each gets its own
answer (the same as alone), shapes and modalities are never mixed, an error reaches its callers."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from binder.server.batching import Batcher


class Slow:
    """encode = x * 2 summed over everything but the batch axis, taking 20 ms per call."""

    def __init__(self) -> None:
        self.calls = []

    def encode(self, modality, x):
        self.calls.append((modality, tuple(x.shape)))
        time.sleep(0.02)
        if modality == "bad":
            raise ValueError("broken input")
        return (x * 2).flatten(1).sum(1, keepdim=True)


def test_concurrent_calls_share_batches_and_get_their_own_results():
    model = Slow()
    batcher = Batcher(model, max_batch=8, max_wait=0.05)
    inputs = [torch.full((1, 3), float(i)) for i in range(16)]

    def query(x):
        with batcher.query():
            return batcher.encode("text", x)

    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(query, inputs))
    assert [float(o) for o in out] == [6.0 * i for i in range(16)]
    assert len(model.calls) <= 4 and max(s[0] for _, s in model.calls) <= 8  # 16 inputs in few calls of <= 8
    batcher.close()


def test_modalities_and_shapes_are_not_mixed_and_errors_reach_their_callers():
    model = Slow()
    batcher = Batcher(model, max_batch=32, max_wait=0.05)
    jobs = [("text", torch.ones(1, 3)), ("text", torch.ones(1, 4)), ("audio", torch.ones(2, 3)),
            ("bad", torch.ones(1, 3))]
    results = {}

    def run(i):
        try:
            with batcher.query():
                results[i] = batcher.encode(*jobs[i])
        except ValueError as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert {(m, s[1:]) for m, s in model.calls} == {("text", (3,)), ("text", (4,)), ("audio", (3,)), ("bad", (3,))}
    assert results[2].shape == (2, 1) and float(results[1]) == 8.0
    assert isinstance(results[3], ValueError) and str(results[3]) == "broken input"
    assert float(batcher.encode("text", torch.ones(1, 3))) == 6.0  # the thread lives on
    batcher.close()


def test_a_lone_query_does_not_wait():
    batcher = Batcher(Slow(), max_batch=32, max_wait=1.0)
    start = time.perf_counter()
    with batcher.query():
        batcher.encode("text", torch.ones(1, 3))
    assert time.perf_counter() - start < 0.5  # 20 ms of work, no 1 s wait for others
    batcher.close()


def random_index(model, n: int, path):
    """An image index of ``n`` random unit vectors of ``model``'s size, with ``model`` attached."""
    from binder.index import Index
    from binder.index.items import EmbedReport, Item

    vectors = np.random.default_rng(n).normal(size=(n, model.anchor.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idx = Index.from_embeddings(model, EmbedReport([Item(f"i{i}") for i in range(n)], vectors, []), "image", path)
    idx.attach(model)
    return idx


def test_the_page_answers_concurrent_queries_as_it_answers_each_alone(audio_model, tmp_path):
    from fastapi.testclient import TestClient

    from binder.server.app import create_app

    idx = random_index(audio_model, 300, tmp_path / "i")
    words = [f"a photo of {w}" for w in ("one", "two", "three", "four", "five", "six", "seven", "eight")]
    alone = {w: [h.id for h in idx.search(text=w, k=5)] for w in words}
    app = create_app(idx, max_batch=16, max_wait=0.05)
    with TestClient(app) as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda w: client.post("/api/search", data={"text": w, "k": "5"}).json(), words * 2))
        stats = idx.model.stats
    assert [[h["id"] for h in a["hits"]] for a in answers] == [alone[w] for w in words * 2]
    assert stats["items"] == 16 and stats["batches"] < 16
    with pytest.raises(AttributeError):
        idx.model.no_such_thing


def _children(pid: int) -> list:
    from pathlib import Path

    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux process tree")
def test_worker_processes_serve_the_same_answers(audio_model, tmp_path):
    """``binder serve --workers 2``: two server processes share the port and answer as in-process."""
    import os
    import socket
    import subprocess
    import sys

    import httpx

    from binder.io import save

    model_dir = save(audio_model, tmp_path / "model")
    idx = random_index(audio_model, 200, tmp_path / "i")
    words = ["a photo of one", "a photo of seven", "the digits 3 and 4."]
    alone = {w: [h.id for h in idx.search(text=w, k=5)] for w in words}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "binder.cli", "serve", str(tmp_path / "i"), "--model", str(model_dir), "--port",
           str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(url + "/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
            assert proc.poll() is None, proc.stderr.read()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda w: httpx.post(url + "/api/search", data={"text": w, "k": "5"}).json(),
                                    words * 4))
        assert [[h["id"] for h in a["hits"]] for a in answers] == [alone[w] for w in words * 4]
        lines = [open(f"/proc/{c}/cmdline").read() for c in _children(proc.pid)]
        assert sum("spawn_main" in line for line in lines) == 2  # the two workers (not the resource tracker)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_workers_below_one_is_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "binder.cli", "serve", str(tmp_path / "none"), "--model", "m",
                        "--workers", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--workers must be at least 1" in r.stderr
    assert "Traceback" not in r.stderr
