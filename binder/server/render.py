"""Search pages as HTML, from the Jinja2 templates in ``binder/server/templates``.

Used by the page of ``binder serve`` (media served by the app, by item id) and by ``binder search
--html`` (a self-contained file: thumbnails inlined as PNG data URLs, audio linked by ``file:``
URL). Jinja2's autoescaping escapes everything user-supplied: file names, metadata, query text.
"""
from __future__ import annotations

import base64
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

HERE = Path(__file__).parent
THUMB = 160
# What a browser shows or plays, by the name of a hit's file (what is served is sniffed: media.py).
SHOWN = {"image": (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"),
         "audio": (".wav", ".flac", ".ogg", ".mp3", ".m4a"), "video": (".mp4", ".webm")}

MediaUrl = Callable[[Dict[str, Any]], Optional[str]]


@lru_cache(maxsize=1)
def environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def kind_of(path: str) -> str:
    """``image``, ``audio``, ``video`` or ``file``, by the suffix of a hit's path."""
    suffix = Path(path).suffix.lower()
    return next((kind for kind, suffixes in SHOWN.items() if suffix in suffixes), "file")


def hit_views(records: Sequence[Dict[str, Any]], media_url: MediaUrl) -> List[Dict[str, Any]]:
    """``Hits.to_records()`` entries -> what the hits template shows of each."""
    return [{"id": int(r["id"]), "rank": int(r["rank"]), "score": float(r["score"]), "path": str(r["path"]),
             "kind": kind_of(str(r["path"])), "url": media_url(r),
             "meta": ", ".join(f"{k}={v}" for k, v in r.get("metadata", {}).items())} for r in records]


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


def file_media_url(record: Dict[str, Any]) -> Optional[str]:
    """Self-contained pages: inline image thumbnails, ``file:`` URLs for audio and video."""
    path = str(record["path"])
    kind = kind_of(path)
    if kind == "image":
        return thumbnail_data_url(path)
    if kind in ("audio", "video") and Path(path).is_absolute():
        return Path(path).as_uri()
    return None


def results_page(title: str, query: Dict[str, Any], records: List[Dict[str, Any]]) -> str:
    """A standalone page of one query's hits (``binder search --html``)."""
    style = (HERE / "static" / "style.css").read_text()
    return render("results.html", title=title, query=json.dumps(query), style=style,
                  hits=hit_views(records, file_media_url))
