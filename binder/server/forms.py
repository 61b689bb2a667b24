"""The search form of ``binder serve``: uploads streamed to disk under a size limit, fields
parsed strictly, the query run against the index.

The request body is counted as it arrives and reading stops at :data:`MAX_BODY` (a declared
``Content-Length`` above it is refused before anything is read); each upload is copied to a
private temporary folder in chunks and stopped at :data:`MAX_UPLOAD`, so a 200 MB upload never
sits in memory. Every problem is a :class:`FormError` with the HTTP status to answer and a message
naming the upload (never a temporary path).
"""
from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from binder.errors import BinderError
from binder.logs import captured_warnings
from binder.server.media import sniff

MAX_UPLOAD = 50 * 1024 * 1024  # bytes per uploaded file
MAX_BODY = 2 * MAX_UPLOAD + (1 << 20)  # bytes per request
MAX_HITS = 200  # the most hits the page and its API return per query
ECHO_MAX = 4 * 1024 * 1024  # uploads up to this size are shown back above the hits (inline)
CHUNK = 1 << 20

Upload = Tuple[str, Path]  # (the name the user gave, where it was saved)


class FormError(BinderError):
    """A request the page answers with ``status`` and this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def too_large(limit: int) -> FormError:
    return FormError(f"the request is over {limit >> 20} MB: upload smaller files (at most {MAX_UPLOAD >> 20} MB "
                     "each)", status=413)


def limited(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    """An ASGI ``receive`` that stops with :class:`FormError` (413) once the body passes ``limit``."""
    received = 0

    async def receive_limited() -> dict:
        nonlocal received
        message = await receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)
        return message

    return receive_limited


async def read_form(request: Any, tmp: Path, file_fields: List[str]) -> Tuple[Dict[str, Upload], Dict[str, str]]:
    """The uploads (saved under ``tmp``) and the other fields of a multipart or urlencoded form."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_large(MAX_BODY)
    body = Request(request.scope, limited(request.receive, MAX_BODY))
    try:
        form = await body.form(max_files=len(file_fields) + 4, max_fields=64)
    except FormError:
        raise
    except Exception as err:  # the multipart parser's own errors
        raise FormError(f"the form could not be read: {str(err).splitlines()[0][:160]}") from None
    uploads: Dict[str, Upload] = {}
    fields: Dict[str, str] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key in file_fields and value.filename:
                    uploads[key] = (value.filename, await _save(value, tmp / f"{key}{_suffix(value.filename)}"))
            else:
                fields[key] = str(value)
    finally:
        await form.close()
    return uploads, fields


def _suffix(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix if len(suffix) <= 8 and suffix[1:].isalnum() else ""


async def _save(upload: Any, path: Path) -> Path:
    """Copy an upload to ``path`` in chunks, stopping at :data:`MAX_UPLOAD`."""
    written = 0
    with open(path, "wb") as out:
        while chunk := await upload.read(CHUNK):
            written += len(chunk)
            if written > MAX_UPLOAD:
                raise FormError(f"the upload {upload.filename!r} is over {MAX_UPLOAD >> 20} MB", status=413)
            out.write(chunk)
    return path


def parse_hits(value: Optional[str]) -> int:
    """The ``k`` field: absent means 10; otherwise a whole number from 1 to :data:`MAX_HITS`."""
    if value is None:
        return 10
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_HITS:
        raise FormError(f"hits (k) must be a whole number from 1 to {MAX_HITS}, got {value[:40]!r}")
    return int(text)


def parse_weight(fields: Dict[str, str], modality: str) -> float:
    """A ``weight_<modality>`` field: empty or absent means 1; otherwise a finite number >= 0."""
    text = fields.get(f"weight_{modality}", "").strip()
    try:
        weight = float(text) if text else 1.0
    except ValueError:
        raise FormError(f"the {modality} weight must be a finite number >= 0, got {text[:40]!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise FormError(f"the {modality} weight must be a finite number >= 0, got {text[:40]!r}")
    return weight


def run_query(index: Any, uploads: Dict[str, Upload], fields: Dict[str, str]) -> Tuple[List[dict], List[str]]:
    """Search ``index`` with the form's query -> (hit records, warnings to show). Errors and
    warnings name the uploads, never their temporary files."""
    k = parse_hits(fields.get("k"))
    query: Dict[str, Any] = {m: str(path) for m, (_, path) in uploads.items()}
    text = fields.get("text", "").strip()
    if text:
        query["text"] = text
    if not query:
        raise FormError("give a query: upload a file, record audio, or type text")
    weights = [parse_weight(fields, m) for m in query]
    names = {str(path): name for name, path in uploads.values()}
    try:
        with captured_warnings() as warnings:
            hits = index.search(**query, weights=weights, k=k)
    except BinderError as err:
        raise FormError(_named(str(err), names)) from None
    return hits.to_records(), [_named(w, names) for w in warnings]


def _named(text: str, names: Dict[str, str]) -> str:
    for path, name in names.items():
        text = text.replace(path, name)
    return text


def echo(uploads: Dict[str, Upload], text: str) -> List[Dict[str, Any]]:
    """The query shown back above its hits: images and sounds inline (as the browser clears its
    file fields), with the type their content shows; other uploads and the text by name."""
    shown = []
    for modality, (name, path) in uploads.items():
        src = None
        if modality in ("image", "audio") and path.stat().st_size <= ECHO_MAX:
            kind, inline = sniff(path)
            if inline and kind.startswith(modality):
                src = f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"
        shown.append({"modality": modality, "label": name, "src": src})
    if text.strip():
        shown.append({"modality": "text", "label": text.strip(), "src": None})
    return shown
