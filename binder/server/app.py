"""``binder serve IDX --model MODEL``: a local search page for an index.

A small FastAPI app serving plain HTML rather than Gradio: three light dependencies (FastAPI,
uvicorn, python-multipart) instead of Gradio's large tree and bundled front end; the page works
without JavaScript (a form posting to ``/search``), a small script file adds microphone
recording (encoded to WAV in the browser); every response is ours to test. The form offers every
modality the model embeds (a plugin modality appears with no change here), with a weight each;
hits show as a gallery with scores, audio and video players. ``POST /api/search`` answers the
same query as JSON.

What it will and will not serve (docs/robustness.md): uploads are streamed to disk and stopped at
their limits; a bad query is a message and a 4xx, never a stack trace; ``/media/{id}`` serves an
indexed file only while it is the very file that was indexed (real path, size and time as
recorded), with the type its content shows, as an attachment when that is not a plain image,
sound or video; every response carries ``nosniff`` and a Content-Security-Policy that lets the
page run only its own script. Queries run in worker threads, off the event loop (each reads and
preprocesses its own inputs), their encoder calls batched across concurrent requests
(:mod:`binder.server.batching`), and follow what other processes write to the index.
"""
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles

from binder.errors import BinderError
from binder.server.batching import MAX_BATCH, MAX_WAIT, Batcher, BatchedModel
from binder.server.forms import MAX_HITS, FormError, echo, read_form, run_query
from binder.server.media import OCTET, sniff
from binder.server.render import HERE, hit_views, render

log = logging.getLogger(__name__)

PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; media-src 'self' data:; script-src 'self'; "
               "style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
MEDIA_POLICY = "default-src 'none'; sandbox"
MAX_ID = 2 ** 63 - 1


class SecurityHeaders:
    """ASGI middleware: ``nosniff``, a Content-Security-Policy (the page's, unless the response
    set a stricter one) and no referrer, on every response (errors and static files too)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Content-Security-Policy", PAGE_POLICY)
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def form_fields(model: Any) -> List[Dict[str, Any]]:
    """One field per modality the model embeds: the image, the bound ones (files, with the suffixes
    their modality reads), then text."""
    from binder.registry import get_modality

    fields = [{"name": "image", "accept": "image/*"}]
    for m in model.bound_modalities:
        accept = ",".join(get_modality(m).extensions)
        fields.append({"name": m, "accept": f"audio/*,{accept}" if m == "audio" else accept, "record": m == "audio"})
    return fields + [{"name": "text"}]


def media_url(record: Dict[str, Any]) -> str:
    return f"/media/{int(record['id'])}"


class Page:
    """Renders the page for one open index (with its model)."""

    def __init__(self, index: Any) -> None:
        self.index, self.fields = index, form_fields(index.model)

    @property
    def file_fields(self) -> List[str]:
        return [f["name"] for f in self.fields if f["name"] != "text"]

    def html(self, form: Optional[Dict[str, str]] = None, **parts: Any) -> str:
        return render("page.html", name=self.index.path.name, count=len(self.index), modality=self.index.modality,
                      fields=self.fields, form=form or {}, max_k=MAX_HITS, message=parts.get("message"),
                      warnings=parts.get("warnings", ()), echo=parts.get("echo"), hits=parts.get("hits"))


def create_app(index: Any, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT) -> FastAPI:
    """The FastAPI app for an open index (with its model attached): concurrent queries' encoder
    calls are batched, up to ``max_batch`` inputs, waiting at most ``max_wait`` seconds (``max_batch``
    1: one call per query)."""
    model = index.model.model if isinstance(index.model, BatchedModel) else index.model
    batcher = Batcher(model, max_batch, max_wait) if model is not None else None
    if batcher is not None:
        index.attach(BatchedModel(model, batcher))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if batcher is not None:
            batcher.close()

    app = FastAPI(title="binder search", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    page = Page(index)

    async def answer(request: Request) -> Tuple[int, Any, Dict[str, str], List[Dict[str, Any]]]:
        """(status, (records, warnings) or a message, the form's fields, the query to show back)."""
        with tempfile.TemporaryDirectory(prefix="binder-serve-") as tmp:
            fields: Dict[str, str] = {}
            try:
                uploads, fields = await read_form(request, Path(tmp), page.file_fields)
                result = await run_in_threadpool(refreshed_query, index, uploads, fields)
                return 200, result, fields, echo(uploads, fields.get("text", ""))
            except FormError as err:
                return err.status, str(err), fields, []
            except BinderError as err:
                return 400, str(err), fields, []
            except Exception:  # never a stack trace on the page; the log keeps it
                log.exception("search failed")
                return 500, "the search failed on the server (see its log)", fields, []

    @app.get("/", response_class=HTMLResponse)
    def home() -> HTMLResponse:
        index.refresh()
        return HTMLResponse(page.html())

    @app.post("/search", response_class=HTMLResponse)
    async def search(request: Request) -> HTMLResponse:
        status, result, fields, shown = await answer(request)
        if status != 200:
            return HTMLResponse(page.html(fields, message=result), status_code=status)
        records, warnings = result
        return HTMLResponse(page.html(fields, warnings=warnings, echo=shown, hits=hit_views(records, media_url)))

    @app.post("/api/search")
    async def api_search(request: Request) -> JSONResponse:
        status, result, _, _ = await answer(request)
        if status != 200:
            return JSONResponse({"error": result}, status_code=status)
        return JSONResponse({"hits": result[0], "warnings": result[1]})

    @app.get("/media/{item_id}")
    def media(item_id: str) -> Response:
        return serve_media(index, item_id, page)

    return app


def refreshed_query(index: Any, uploads: Dict[str, Any], fields: Dict[str, str]) -> Any:
    """Follow what other processes published, then run the query (one worker-thread hop)."""
    index.refresh()
    return run_query(index, uploads, fields)


def serve_media(index: Any, item_id: str, page: Page) -> Response:
    """An indexed file, only while it is the very file that was indexed, typed by its content."""
    if not item_id.isdigit() or len(item_id) > 19 or int(item_id) > MAX_ID:
        return HTMLResponse(page.html(message=f"no item {item_id[:40]!r}: item ids are whole numbers"), 404)
    try:
        item = index.get(int(item_id))
        if item.file is None:
            raise FormError(f"item {item_id} has no file to serve")
        fd = item.file.open(item.path)
    except BinderError as err:
        return HTMLResponse(page.html(message=str(err)), status_code=404)
    try:
        # Serve the opened descriptor through /proc (Linux), so that nothing swapped in at the
        # path since it was checked can be served; elsewhere the checked real path.
        target = f"/proc/self/fd/{fd}" if os.path.exists(f"/proc/self/fd/{fd}") else item.file.real
        kind, inline = sniff(target)
    except OSError:
        os.close(fd)
        return HTMLResponse(page.html(message=f"the file of item {item_id} cannot be read"), status_code=404)
    headers = {"Content-Security-Policy": MEDIA_POLICY}
    close = BackgroundTask(os.close, fd)
    if inline:
        return FileResponse(target, media_type=kind, headers=headers, background=close)
    return FileResponse(target, media_type=OCTET, headers=headers, background=close,
                        filename=Path(item.file.real).name, content_disposition_type="attachment")


SERVE_ENV = "BINDER_SERVE_SETTINGS"  # what each worker process of ``--workers N`` opens (JSON)


def run_server(index_path: str, model: str, host: str = "127.0.0.1", port: int = 8765, max_batch: int = MAX_BATCH,
               max_wait: float = MAX_WAIT, workers: int = 1) -> None:
    """Open the index with its model and serve the page until interrupted. ``workers`` > 1:
    that many server processes share the port (uvicorn's workers), each with its own model,
    batcher and ``cores / workers`` torch threads, so parsing, decoding and preprocessing, which
    hold Python's lock, run on every core at once."""
    import uvicorn

    from binder.index import Index
    from binder.io import load

    if workers < 1:
        raise BinderError(f"--workers must be at least 1, not {workers}")
    index = Index.open(index_path, load(model))  # checked here, so a bad index or model is one line
    log.warning("binder search page: http://%s:%d (index %s, %d items%s)", host, port, index.path, len(index),
                f", {workers} worker processes" if workers > 1 else "")
    if workers == 1:
        uvicorn.run(create_app(index, max_batch, max_wait), host=host, port=port, log_level="warning")
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers) if hasattr(os, "sched_getaffinity") else 1
    os.environ[SERVE_ENV] = json.dumps({"index": str(index.path), "model": model, "max_batch": max_batch,
                                        "max_wait": max_wait, "threads": threads})
    del index
    uvicorn.run("binder.server.app:app_from_environment", factory=True, workers=workers, host=host, port=port,
                log_level="warning")


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``binder serve --workers N`` (uvicorn calls it in each)."""
    import torch

    from binder.index import Index
    from binder.io import load

    settings = json.loads(os.environ[SERVE_ENV])
    torch.set_num_threads(int(settings["threads"]))
    index = Index.open(settings["index"], load(settings["model"]))
    return create_app(index, int(settings["max_batch"]), float(settings["max_wait"]))
