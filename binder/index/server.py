"""``binder serve IDX --model MODEL``: a local search page for an index.

A small FastAPI app serving plain HTML rather than Gradio: it adds three light dependencies
(FastAPI, uvicorn, python-multipart) instead of Gradio's large tree and its bundled front end,
the page works without JavaScript (a form posting to ``/search``; a few lines of script add
microphone recording, encoded to WAV in the browser, so nothing needs decoding server-side), and
every response is ours to test. Upload or record audio, upload an image, type text, set the
weights, see the hits as a gallery with scores and play audio hits. A bad upload (not an image,
silent or unreadable audio, no query at all) gets a message on the page and status 400, never a
stack trace. Media are served by hit id only (``/media/{id}``), never by a path from the request.
``POST /api/search`` answers the same query as JSON.
"""
from __future__ import annotations

import base64
import html
import logging
import mimetypes
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the handlers' (string) annotations here

from binder.errors import BinderError, BinderInputError
from binder.index.html import STYLE, hits_html

log = logging.getLogger(__name__)

MAX_UPLOAD = 50 * 1024 * 1024
SILENCE = 1e-4  # peak amplitude below this (-80 dBFS) counts as silent
ECHO_MAX = 4 * 1024 * 1024  # uploads up to this size are shown back above the hits (inline)
MODALITIES = ("image", "audio", "text")

RECORDER_JS = """
let rec = null;
async function toggleRecording() {
  const button = document.getElementById('record');
  if (rec) { rec.stop(); return; }
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const ctx = new AudioContext(); const src = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1); const chunks = [];
  node.onaudioprocess = e => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  src.connect(node); node.connect(ctx.destination);
  button.textContent = 'Stop recording';
  rec = {stop: () => {
    node.disconnect(); src.disconnect(); stream.getTracks().forEach(t => t.stop());
    const blob = wavBlob(chunks, ctx.sampleRate); ctx.close(); rec = null;
    const file = new File([blob], 'recording.wav', {type: 'audio/wav'});
    const dt = new DataTransfer(); dt.items.add(file); document.getElementById('audio').files = dt.files;
    button.textContent = 'Record again';
  }};
}
function wavBlob(chunks, rate) {
  const n = chunks.reduce((a, c) => a + c.length, 0); const buf = new ArrayBuffer(44 + 2 * n);
  const v = new DataView(buf); const w = (o, s) => [...s].forEach((ch, i) => v.setUint8(o + i, ch.charCodeAt(0)));
  w(0, 'RIFF'); v.setUint32(4, 36 + 2 * n, true); w(8, 'WAVEfmt '); v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); v.setUint16(22, 1, true); v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true);
  v.setUint16(32, 2, true); v.setUint16(34, 16, true); w(36, 'data'); v.setUint32(40, 2 * n, true);
  let o = 44;
  for (const c of chunks) for (const x of c) { v.setInt16(o, Math.max(-1, Math.min(1, x)) * 32767, true); o += 2; }
  return new Blob([buf], {type: 'audio/wav'});
}
"""


def page(index: Any, body: str = "", form: Optional[Dict[str, Any]] = None) -> str:
    """The whole page: the query form, then ``body`` (hits or a message)."""
    form = form or {}
    k = int(form.get("k", 10))
    weights = {m: form.get(f"weight_{m}", 1.0) for m in MODALITIES}
    rows = "".join(
        f'<label for="weight_{m}">{m} weight</label><input id="weight_{m}" name="weight_{m}" type="number" '
        f'step="0.05" min="0" value="{html.escape(str(weights[m]))}">' for m in MODALITIES)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>binder search</title>
<style>{STYLE}</style></head><body>
<h1>binder search</h1>
<p>{html.escape(index.path.name)}: {len(index)} {html.escape(index.modality)} items</p>
<form id="query" method="post" action="/search" enctype="multipart/form-data">
<label for="image">image</label><input id="image" name="image" type="file" accept="image/*">
<label for="audio">audio</label><span><input id="audio" name="audio" type="file" accept="audio/*">
<button type="button" id="record" onclick="toggleRecording()">Record</button></span>
<label for="text">text</label><input id="text" name="text" type="text" value="{html.escape(form.get('text') or '')}">
{rows}
<label for="k">hits</label><input id="k" name="k" type="number" min="1" max="200" value="{k}">
<span></span><button id="submit" type="submit">Search</button>
</form>
{body}
<script>{RECORDER_JS}</script></body></html>"""


def query_html(uploads: Dict[str, Tuple[str, bytes]], text: str) -> str:
    """The query shown back above its hits: the uploaded image, a player for the uploaded sound
    (inline data, as the browser clears its file fields), the text."""
    parts = []
    for modality, (name, data) in uploads.items():
        if not data:
            continue
        label = html.escape(name)
        if len(data) > ECHO_MAX:
            parts.append(f'<figure class="query-{modality}"><figcaption>{modality}: {label}</figcaption></figure>')
            continue
        mime = mimetypes.guess_type(name)[0] or ("image/png" if modality == "image" else "audio/wav")
        src = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        tag = f'<img src="{src}" alt="{label}">' if modality == "image" else f'<audio controls src="{src}"></audio>'
        parts.append(f'<figure class="query-{modality}">{tag}<figcaption>{label}</figcaption></figure>')
    if text.strip():
        parts.append(f'<figure class="query-text"><figcaption>&ldquo;{html.escape(text.strip())}&rdquo;</figcaption>'
                     '</figure>')
    return f'<div id="query-echo"><h2>query</h2>{"".join(parts)}</div>'


def message(text: str) -> str:
    return f'<p class="error" id="message">{html.escape(text)}</p>'


def check_audio_upload(path: Path, name: str) -> None:
    """A readable, non-silent recording, or a clear error naming the upload."""
    import soundfile as sf

    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises its own error types
        reason = str(err).replace(str(path), name).splitlines()[0][:160]
        raise BinderInputError(f"the audio upload {name!r} is not a readable recording (WAV, FLAC, OGG or MP3): "
                               f"{reason}") from None
    if not data.size:
        raise BinderInputError(f"the audio upload {name!r} is empty")
    if not np.isfinite(data).all() or float(np.abs(data).max()) < SILENCE:
        raise BinderInputError(f"the audio upload {name!r} is silent: record or choose a recording with sound")


class Searcher:
    """Turns a form (uploads, text, weights) into a search over one index."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def run(self, uploads: Dict[str, Tuple[str, bytes]], text: str, weights: Dict[str, float], k: int,
            tmp: Path) -> List[Dict[str, Any]]:
        query: Dict[str, Any] = {}
        for modality, (name, data) in uploads.items():
            if not data:
                continue
            if len(data) > MAX_UPLOAD:
                raise BinderInputError(f"the {modality} upload {name!r} is over {MAX_UPLOAD >> 20} MB")
            path = tmp / f"{modality}{Path(name).suffix.lower()[:8]}"
            path.write_bytes(data)
            if modality == "audio":
                check_audio_upload(path, name)
            query[modality] = str(path)
        if text.strip():
            query["text"] = text.strip()
        if not query:
            raise BinderInputError("give a query: upload an image, upload or record audio, or type text")
        if not 1 <= k <= 200:
            raise BinderInputError(f"hits must be between 1 and 200, got {k}")
        try:
            hits = self.index.search(**query, weights=[weights[m] for m in query], k=k)
        except BinderInputError as err:  # name the upload, not the temporary file
            text_err = str(err)
            for modality, (name, _) in uploads.items():
                text_err = text_err.replace(str(tmp / f"{modality}{Path(name).suffix.lower()[:8]}"), name)
            raise BinderInputError(text_err) from None
        return hits.to_records()


def create_app(index: Any) -> Any:
    """The FastAPI app for an open index (with its model attached)."""
    from fastapi import FastAPI
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

    app = FastAPI(title="binder search", docs_url=None, redoc_url=None)
    searcher = Searcher(index)

    async def read_form(request: Request) -> Tuple[Dict[str, Tuple[str, bytes]], Dict[str, Any]]:
        form = await request.form()
        uploads, fields = {}, {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                if key in ("image", "audio") and value.filename:
                    uploads[key] = (value.filename, await value.read())
            else:
                fields[key] = value
        return uploads, fields

    def parse(fields: Dict[str, Any]) -> Tuple[str, Dict[str, float], int]:
        try:
            weights = {m: float(fields.get(f"weight_{m}") or 1.0) for m in MODALITIES}
            k = int(fields.get("k") or 10)
        except ValueError:
            raise BinderInputError("weights and hits must be numbers") from None
        return str(fields.get("text") or ""), weights, k

    async def answer(request: Request) -> Tuple[int, Any, Dict[str, Any], Dict[str, Tuple[str, bytes]]]:
        uploads, fields = await read_form(request)
        try:
            text, weights, k = parse(fields)
            with tempfile.TemporaryDirectory(prefix="binder-serve-") as tmp:
                return 200, searcher.run(uploads, text, weights, k, Path(tmp)), fields, uploads
        except BinderError as err:
            return 400, str(err), fields, uploads
        except Exception:  # never a stack trace on the page; the log keeps it
            log.exception("search failed")
            return 500, "the search failed on the server (see its log)", fields, uploads

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page(index)

    def media_url(record: Dict[str, Any]) -> str:
        return f"/media/{int(record['id'])}"

    @app.post("/search", response_class=HTMLResponse)
    async def search(request: Request) -> HTMLResponse:
        status, result, fields, uploads = await answer(request)
        if status == 200:
            body = query_html(uploads, str(fields.get("text") or "")) + hits_html(result, media_url)
        else:
            body = message(result)
        return HTMLResponse(page(index, body, fields), status_code=status)

    @app.post("/api/search")
    async def api_search(request: Request) -> JSONResponse:
        status, result, _, _ = await answer(request)
        return JSONResponse({"hits": result} if status == 200 else {"error": result}, status_code=status)

    @app.get("/media/{item_id}")
    def media(item_id: int) -> Any:
        rows = index.backend.rows([item_id])
        if item_id not in rows or not Path(rows[item_id]["path"]).is_file():
            return HTMLResponse(message(f"no file for item {item_id}"), status_code=404)
        return FileResponse(rows[item_id]["path"])

    return app


def run_server(index_path: str, model: str, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Open the index with its model and serve the page until interrupted."""
    import uvicorn

    from binder.index import Index
    from binder.io import load

    index = Index.open(index_path, load(model))
    log.warning("binder search page: http://%s:%d (index %s, %d items)", host, port, index.path, len(index))
    uvicorn.run(create_app(index), host=host, port=port, log_level="warning")
