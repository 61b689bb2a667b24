"""Search hits as HTML: a gallery of image thumbnails and audio players, with scores.

Used by ``binder search --html`` (a self-contained file: thumbnails inlined as PNG data URLs,
audio linked by ``file:`` URL) and by the page of ``binder serve`` (media served by the app).
Everything user-supplied is escaped.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from binder.index.items import IMAGE_EXTENSIONS

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
THUMB = 160

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
.hits { display: flex; flex-wrap: wrap; gap: 12px; }
.hit { border: 1px solid #ccc; border-radius: 6px; padding: 8px; width: 200px; font-size: 13px; }
.hit img { display: block; max-width: 184px; max-height: 184px; image-rendering: pixelated; margin: auto; }
.hit audio { width: 184px; }
#query-echo { display: flex; gap: 12px; align-items: flex-end; margin: 8px 0 12px; }
#query-echo h2 { font-size: 15px; margin: 0 8px 0 0; }
#query-echo figure { margin: 0; font-size: 13px; }
#query-echo img { display: block; max-height: 96px; image-rendering: pixelated; }
.score { font-weight: 600; }
.path { word-break: break-all; color: #555; }
.meta { color: #333; }
.error { color: #a00; background: #fee; border: 1px solid #d99; padding: 8px; border-radius: 6px; }
form { display: grid; grid-template-columns: 9rem 1fr; gap: 8px; max-width: 44rem; margin-bottom: 1rem; }
"""


def thumbnail_data_url(path: str) -> Optional[str]:
    """A PNG data URL of the image at ``path``, fit into THUMB px (None if unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = THUMB / max(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.NEAREST if scale > 1 else Image.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def kind_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else "file"


def hit_card(record: Dict[str, Any], media_url: Callable[[Dict[str, Any]], Optional[str]]) -> str:
    """One hit (a ``Hits.to_records()`` entry) as an HTML card."""
    path, kind = str(record["path"]), kind_of(str(record["path"]))
    url = media_url(record)
    if kind == "image" and url:
        media = f'<img src="{html.escape(url)}" alt="hit {record["rank"]}">'
    elif kind == "audio" and url:
        media = f'<audio controls preload="none" src="{html.escape(url)}"></audio>'
    else:
        media = ""
    meta = ", ".join(f"{html.escape(str(k))}={html.escape(str(v))}" for k, v in record.get("metadata", {}).items())
    return (f'<div class="hit" data-id="{int(record["id"])}">{media}'
            f'<div>#{int(record["rank"])} <span class="score">{float(record["score"]):.4f}</span></div>'
            f'<div class="path">{html.escape(path)}</div><div class="meta">{meta}</div></div>')


def hits_html(records: Sequence[Dict[str, Any]], media_url: Callable[[Dict[str, Any]], Optional[str]]) -> str:
    cards = "\n".join(hit_card(r, media_url) for r in records)
    return f'<div class="hits" id="hits">{cards}</div>' if records else '<p id="hits">No hits.</p>'


def file_media_url(record: Dict[str, Any]) -> Optional[str]:
    """Self-contained pages: inline image thumbnails, ``file:`` URLs for audio."""
    path = str(record["path"])
    kind = kind_of(path)
    if kind == "image":
        return thumbnail_data_url(path)
    if kind == "audio" and Path(path).is_absolute():
        return Path(path).as_uri()
    return None


def results_page(title: str, query: Dict[str, Any], records: List[Dict[str, Any]]) -> str:
    """A standalone page of one query's hits (``binder search --html``)."""
    described = html.escape(json.dumps(query))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>query: <code>{described}</code></p>"
            f"{hits_html(records, file_media_url)}</body></html>")
