"""Load on the search page (``binder serve``): throughput and latency at several concurrencies,
text latency while long uploads run, memory over many requests; batched against unbatched.

A 10,000-item image index (vectors of the digits model's size, random unit vectors: search cost
does not depend on the values) is served by uvicorn in a child process, with the audio encoder
binder trains by default on the digits anchor's architecture (random weights), once with dynamic
batching (``--max-batch 32``), once without (``--max-batch 1``) and once batched with one server
process per core (``--workers``, each with its own model and batcher). The load generator is a
bounded asyncio script (httpx, one connection per virtual user):

1. mixed queries (a third text, a third a 28 x 56 PNG image, a third a 2 s 16 kHz WAV) to
   ``POST /api/search`` at concurrency 1, 8 and 32, ``--requests`` per level: requests/s, p50, p95, p99;
2. text-only queries at concurrency 4 while 4 clients (another process) upload 60 s 44.1 kHz
   stereo WAVs (10 MB) without pause: text p50 / p95;
3. ``--soak`` mixed requests at concurrency 8 (the workers server), the resident memory of the
   server's processes sampled before and after (``/proc/<pid>/status``).

With ``--generator wrk`` the mixed-query levels are driven by wrk (an existing C load generator,
one thread, ``--seconds`` per level, the same 30 request bodies in turn) instead of the asyncio
script, whose own Python work competes with the server for the same cores.

Prints a table, the ratio of concurrency 8 to 1 for each server, and writes
``benchmarks/serve_load.json`` (``serve_load-wrk.json`` with wrk).

    python benchmarks/serve_load.py                       # the full run (10,000-request soak)
    python benchmarks/serve_load.py --requests 100 --soak 500
    python benchmarks/serve_load.py --generator wrk --seconds 15 --soak 2000
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np


def build_index(folder: Path, items: int) -> Path:
    """A model folder and a ``items``-vector index built with it, in ``folder``."""
    import binder
    from binder.index import Index
    from binder.index.items import EmbedReport, Item

    model = binder.create_model("bind", anchor="binder-digits", modalities=["audio"]).eval()
    model.calibrate_embeddings(torch_unit(500, model.anchor.embed_dim, 1), {"text": torch_unit(50, 128, 2),
                                                                          "image": torch_unit(50, 128, 3),
                                                                          "audio": torch_unit(50, 128, 4)})
    binder.save(model, folder / "model")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(items, model.anchor.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    report = EmbedReport([Item(f"/data/img{i:05d}.png", {"shard": i % 10}) for i in range(items)], vectors, [])
    Index.from_embeddings(model, report, "image", folder / "index").close()
    return folder


def torch_unit(n: int, d: int, seed: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def serve(folder: Path, port: int, max_batch: int, workers: int = 1) -> subprocess.Popen:
    """``binder serve`` in a child process, returned once it answers."""
    cmd = [sys.executable, "-m", "binder.cli", "serve", str(folder / "index"), "--model", str(folder / "model"),
           "--port", str(port), "--max-batch", str(max_batch), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def payloads() -> Dict[str, Any]:
    """The bodies of the queries: text, a PNG, a 2 s WAV, a 60 s 44.1 kHz stereo WAV."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (28, 56, 3), dtype=np.uint8)).save(png, format="PNG")
    t = np.arange(32000) / 16000
    wav = io.BytesIO()
    sf.write(wav, (0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t)).astype(np.float32), 16000, format="WAV",
             subtype="PCM_16")
    long = io.BytesIO()
    sf.write(long, (0.2 * rng.normal(size=(60 * 44100, 2))).astype(np.float32), 44100, format="WAV", subtype="PCM_16")
    return {"png": png.getvalue(), "wav": wav.getvalue(), "long": long.getvalue()}


def request(kind: str, i: int, p: Dict[str, Any]) -> Dict[str, Any]:
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    if kind == "text":
        return {"data": {"text": f"a photo of {words[i % 10]}", "k": "10"}}
    if kind == "image":
        return {"data": {"k": "10"}, "files": {"image": ("q.png", p["png"], "image/png")}}
    if kind == "audio":
        return {"data": {"k": "10"}, "files": {"audio": ("q.wav", p["wav"], "audio/wav")}}
    return {"data": {"k": "10"}, "files": {"audio": ("long.wav", p["long"], "audio/wav")}}


async def users(url: str, kinds: List[str], total: int, concurrency: int, p: Dict[str, Any]) -> List[float]:
    """``total`` requests of the given kinds (in turn) from ``concurrency`` clients -> latencies (s)."""
    import httpx

    latencies: List[float] = []
    counter = iter(range(total))

    async def user() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            for i in counter:
                start = time.perf_counter()
                r = await client.post(url, **request(kinds[i % len(kinds)], i, p))
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return latencies


WRK_SCRIPT = r"""
local bodies, i = {}, 0
function init(args)
  for k, path in ipairs(args) do
    local f = assert(io.open(path, "rb")); bodies[k] = f:read("*a"); f:close()
  end
end
function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "multipart/form-data; boundary=BOUNDARY"}, bodies[i])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "seconds": %f, "p50_ms": %f, "p95_ms": %f, "p99_ms": %f, '
    .. '"errors": %d, "non2xx": %d}\n', summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, e.connect + e.read + e.write + e.timeout, e.status))
end
"""
BOUNDARY = "binderbenchboundary"


def multipart(fields: Dict[str, str], files: Dict[str, tuple]) -> bytes:
    """A multipart/form-data body with the fixed ``BOUNDARY``."""
    out = b""
    for name, value in fields.items():
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    for name, (filename, data, kind) in files.items():
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: {kind}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def wrk_workload(p: Dict[str, Any], folder: Path) -> List[str]:
    """The wrk script and the 30 request bodies (text, image, audio in turn) in ``folder`` ->
    [script, body, ...]."""
    script = folder / "mixed.lua"
    script.write_text(WRK_SCRIPT.replace("BOUNDARY", BOUNDARY))
    files = [str(script)]
    for i in range(30):
        req = request(("text", "image", "audio")[i % 3], i // 3, p)
        path = folder / f"body{i:02d}"
        path.write_bytes(multipart(req["data"], req.get("files", {})))
        files.append(str(path))
    return files


def wrk_level(url: str, concurrency: int, seconds: float, workload: List[str]) -> Dict[str, float]:
    """Mixed queries from ``wrk`` (one thread, ``concurrency`` connections) for ``seconds``: the
    load generator costs a fraction of the Python one's CPU."""
    script, *bodies = workload
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s", "-s", script, url,
           "--", *bodies]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout[-500:]} {run.stderr[-500:]}")
    line = next(x for x in run.stdout.splitlines() if x.startswith("WRK "))
    stats = json.loads(line[4:])
    if stats["errors"] or stats["non2xx"]:
        raise RuntimeError(f"wrk saw {stats['errors']} errors and {stats['non2xx']} non-200 answers:\n{run.stdout}")
    return {"requests": stats["requests"], "rps": stats["requests"] / stats["seconds"], "p50_ms": stats["p50_ms"],
            "p95_ms": stats["p95_ms"], "p99_ms": stats["p99_ms"], "generator": "wrk"}


def _upload_forever(url: str, body: bytes) -> None:
    """(A child process) 4 clients posting 60 s WAVs without pause, until terminated."""
    import httpx

    async def uploader() -> None:
        async with httpx.AsyncClient(timeout=300) as client:
            while True:
                await client.post(url, data={"k": "10"}, files={"audio": ("long.wav", body, "audio/wav")})

    async def run() -> None:
        await asyncio.gather(*(uploader() for _ in range(4)))

    asyncio.run(run())


def while_uploading(url: str, p: Dict[str, Any], texts: int) -> List[float]:
    """Text latencies at concurrency 4 while 4 clients upload 60 s WAVs without pause (from another
    process, so that the uploads' client work does not delay the measuring client)."""
    import multiprocessing

    uploads = multiprocessing.get_context("spawn").Process(target=_upload_forever, args=(url, p["long"]), daemon=True)
    uploads.start()
    time.sleep(3.0)  # the uploads under way
    try:
        return asyncio.run(users(url, ["text"], texts, 4, p))
    finally:
        uploads.terminate()
        uploads.join(timeout=10)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server's worker processes)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_mb(int(child))
    return total


def summary(lat: List[float], seconds: float) -> Dict[str, float]:
    ms = np.array(lat) * 1e3
    return {"requests": len(lat), "rps": len(lat) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}


def measure(folder: Path, max_batch: int, args: argparse.Namespace, p: Dict[str, Any],
            workers: int = 1) -> Dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve(folder, port, max_batch, workers)
    url = f"http://127.0.0.1:{port}/api/search"
    out: Dict[str, Any] = {"max_batch": max_batch, "workers": workers, "levels": {}}
    try:
        asyncio.run(users(url, ["text", "image", "audio"], 30, 4, p))  # warm-up
        for level in (1, 8, 32):
            start = time.perf_counter()
            if args.generator == "wrk":
                out["levels"][level] = wrk_level(url, level, args.seconds, p["wrk"])
            else:
                lat = asyncio.run(users(url, ["text", "image", "audio"], args.requests, level, p))
                out["levels"][level] = summary(lat, time.perf_counter() - start)
            s = out["levels"][level]
            print(f"max_batch {max_batch:>2} x{workers}  concurrency {level:>2}: {s['rps']:7.1f} req/s  "
                  f"p50 {s['p50_ms']:7.1f} ms  p95 {s['p95_ms']:7.1f}  p99 {s['p99_ms']:7.1f}", flush=True)
        start = time.perf_counter()
        lat = while_uploading(url, p, args.texts)
        out["text_during_uploads"] = summary(lat, time.perf_counter() - start)
        s = out["text_during_uploads"]
        print(f"max_batch {max_batch:>2} x{workers}  text while 60 s WAVs upload: p50 {s['p50_ms']:.1f} ms  "
              f"p95 {s['p95_ms']:.1f} ms", flush=True)
        if args.soak:
            before = rss_mb(proc.pid)
            start = time.perf_counter()
            lat = asyncio.run(users(url, ["text", "image", "audio"], args.soak, 8, p))
            out["soak"] = {**summary(lat, time.perf_counter() - start), "rss_before_mb": before,
                           "rss_after_mb": rss_mb(proc.pid)}
            s = out["soak"]
            print(f"max_batch {max_batch:>2} x{workers}  {args.soak} requests: server memory "
                  f"{s['rss_before_mb']:.0f} MB -> {s['rss_after_mb']:.0f} MB", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    parser.add_argument("--texts", type=int, default=200, help="text queries measured during the uploads")
    parser.add_argument("--generator", choices=["python", "wrk"], default="python",
                        help="the mixed-query load: the bounded asyncio script, or wrk (apt install wrk)")
    parser.add_argument("--seconds", type=float, default=15, help="seconds per concurrency level with wrk")
    parser.add_argument("--soak", type=int, default=10_000, help="requests of the memory run (the workers server only)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="server processes of the third server (default: one per core)")
    parser.add_argument("--out", default=None, help="default: serve_load.json (serve_load-wrk.json with wrk)")
    args = parser.parse_args(argv)
    os.environ.setdefault("BINDER_CACHE", tempfile.mkdtemp(prefix="binder-cache-"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_index(Path(tmp), args.items)
        p = payloads()
        if args.generator == "wrk":
            p["wrk"] = wrk_workload(p, Path(tmp))
        soak = args.soak
        args.soak = 0
        unbatched = measure(folder, 1, args, p)
        batched = measure(folder, 32, args, p)
        args.soak = soak
        workers = measure(folder, 32, args, p, workers=args.workers)
    result = {"items": args.items, "cores": os.cpu_count(), "generator": args.generator, "unbatched": unbatched,
              "batched": batched,
              "batched_workers": workers}
    for name, run in (("unbatched", unbatched), ("batched", batched), (f"batched, {args.workers} workers", workers)):
        run["ratio_8_to_1"] = run["levels"][8]["rps"] / run["levels"][1]["rps"]
        print(f"{name}: concurrency 8 / concurrency 1 = x{run['ratio_8_to_1']:.2f}")
    print(f"batched / unbatched at concurrency 8: x{batched['levels'][8]['rps'] / unbatched['levels'][8]['rps']:.2f}")
    gain = workers["levels"][8]["rps"] / batched["levels"][8]["rps"]
    print(f"{args.workers} workers / 1 at concurrency 8: x{gain:.2f}")
    suffix = "-wrk" if args.generator == "wrk" else ""
    Path(args.out or Path(__file__).with_name(f"serve_load{suffix}.json")).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
