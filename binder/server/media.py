"""What a file served by the search page really is, read from its first bytes.

The name of an indexed file says nothing trustworthy (a PNG renamed ``evil.html`` is still a
PNG, and an HTML file renamed ``cat.png`` is still HTML), so ``/media/{id}`` serves a file with
the type its content shows, from a short list of formats a browser displays or plays without
running anything; every other file goes out as an ``application/octet-stream`` attachment. The
magic numbers are those of each format's specification (PNG, JPEG/JFIF, GIF87a/89a, RIFF WEBP,
BMP, RIFF WAVE, FLAC, Ogg, MP3 with ID3 or an MPEG frame sync, ISO base media ``ftyp``, Matroska
/ WebM EBML).
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

SNIFF_BYTES = 64
OCTET = "application/octet-stream"


def sniff_bytes(head: bytes) -> str:
    """The media type shown by a file's first bytes, or ``application/octet-stream``."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head.startswith(b"BM") and len(head) >= 26 and head[14] in (12, 40, 52, 56, 64, 108, 124):
        return "image/bmp"
    if head.startswith(b"fLaC"):
        return "audio/flac"
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if head[4:8] == b"ftyp":
        return "audio/mp4" if head[8:11] == b"M4A" else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    return OCTET


def sniff(path: "str | Path") -> Tuple[str, bool]:
    """(media type, whether it may be shown inline) of the file at ``path``."""
    with open(path, "rb") as fh:
        kind = sniff_bytes(fh.read(SNIFF_BYTES))
    return kind, kind != OCTET
