"""What the search page will and will not serve: uploads stopped at their limit, media typed by
their content and served only while they are the indexed file, security headers everywhere, and
every bad request a 4xx with a message."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from binder.index import Index
from binder.server import create_app
from binder.server import forms as forms_module
from binder.server.media import sniff_bytes

from helpers import write_blobs


def png_with_script(path: Path) -> Path:
    """A valid PNG whose tEXt chunk holds an HTML page with a script (a polyglot)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 56), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    text = b"Comment\x00<html><script>document.title='pwned'</script></html>"
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    path.write_bytes(data[:33] + chunk + data[33:])  # after the IHDR chunk
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve_safety")
    write_blobs(root, ["a.png", "b.png", "c.png", "victim.png"])
    png_with_script(root / "evil.html")
    png_with_script(root / "evil.svg")
    from PIL import Image

    Image.open(root / "a.png").save(root / "d.tiff")
    t = np.arange(8000) / 8000
    sf.write(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    wav = (root / "tone.wav").read_bytes()
    (root / "truncated.wav").write_bytes(wav[:60])  # the header promises a second, 16 bytes are there
    sf.write(root / "silent.wav", np.zeros(8000, np.float32), 8000)
    return root


@pytest.fixture(scope="module")
def client(audio_model, files, tmp_path_factory):
    names = ["a.png", "b.png", "c.png", "victim.png", "evil.html", "evil.svg", "d.tiff"]
    index = Index.build(audio_model, [files / n for n in names], "image", tmp_path_factory.mktemp("i") / "idx",
                        num_workers=0, progress=False)
    with TestClient(create_app(index)) as c:
        c.ids = {Path(r["path"]).name: i for i, r in index.engine.rows(range(len(names))).items()}
        yield c


def test_every_response_carries_the_security_headers(client):
    for response in (client.get("/"), client.get("/static/recorder.js"), client.get("/media/999"),
                     client.get("/nowhere"), client.post("/search", data={"k": "x"})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in response.headers["content-security-policy"] or \
            response.headers["content-security-policy"] == "default-src 'none'; sandbox"
    page = client.get("/").text
    assert "<script>" not in page and 'src="/static/recorder.js"' in page  # no inline script to allow
    assert "onclick" not in page


@pytest.mark.parametrize("name", ["evil.html", "evil.svg"])
def test_media_are_typed_by_their_content_never_their_name(client, name):
    r = client.get(f"/media/{client.ids[name]}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert r.content.startswith(b"\x89PNG")


def test_other_files_are_attachments(client):
    r = client.get(f"/media/{client.ids['d.tiff']}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].startswith("attachment;") and "d.tiff" in r.headers["content-disposition"]


def test_a_file_swapped_for_a_symlink_or_changed_is_not_served(client, files):
    victim = files / "victim.png"
    original = victim.read_bytes()
    item = client.ids["victim.png"]
    assert client.get(f"/media/{item}").content == original
    try:
        victim.unlink()
        victim.symlink_to("/etc/passwd")
        r = client.get(f"/media/{item}")
        assert r.status_code == 404 and "changed since it was indexed" in r.text and "root:" not in r.text
        victim.unlink()
        victim.write_bytes(original + b"extra")  # same place, other content
        assert client.get(f"/media/{item}").status_code == 404
    finally:
        victim.unlink()
        victim.write_bytes(original)


@pytest.mark.parametrize("item_id", ["999", "1" * 30, "-1", "abc", "1e3"])
def test_unknown_or_malformed_media_ids_are_404(client, item_id):
    r = client.get(f"/media/{item_id}")
    assert r.status_code == 404 and "Traceback" not in r.text and 'id="message"' in r.text


@pytest.mark.parametrize("k", ["abc", "", "1e3", "0", "201", "-3", " 5x"])
def test_bad_hit_counts_are_400(client, k):
    r = client.post("/api/search", data={"text": "a", "k": k})
    assert r.status_code == 400 and "hits (k) must be a whole number from 1 to 200" in r.json()["error"]
    page = client.post("/search", data={"text": "a", "k": k})
    assert page.status_code == 400 and "hits (k) must be a whole number" in page.text


def test_openapi_describes_the_api(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and "/api/search" in r.json()["paths"]


def test_uploads_stop_at_the_limit(client, monkeypatch):
    monkeypatch.setattr(forms_module, "MAX_UPLOAD", 1 << 20)
    monkeypatch.setattr(forms_module, "MAX_BODY", 3 << 20)
    big = b"\x89PNG" + b"\x00" * (2 << 20)
    r = client.post("/api/search", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "the upload 'big.png' is over 1 MB" in r.json()["error"]
    huge = b"\x00" * (4 << 20)
    r = client.post("/api/search", files={"image": ("huge.png", huge, "image/png")})
    assert r.status_code == 413 and "the request is over 3 MB" in r.json()["error"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(8):
            yield b"\x00" * (1 << 20)

    r = client.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


def test_a_truncated_recording_is_answered_with_a_warning(client, files):
    with open(files / "truncated.wav", "rb") as f:
        r = client.post("/api/search", files={"audio": ("truncated.wav", f, "audio/wav")}, data={"k": "2"})
    assert r.status_code == 200 and len(r.json()["hits"]) == 2
    (warning,) = r.json()["warnings"]
    assert "'truncated.wav' is truncated" in warning and "binder-serve-" not in warning
    with open(files / "truncated.wav", "rb") as f:
        page = client.post("/search", files={"audio": ("truncated.wav", f, "audio/wav")})
    assert page.status_code == 200 and 'class="warning"' in page.text and "is truncated" in page.text


def test_a_silent_recording_is_refused_like_everywhere_else(client, files):
    with open(files / "silent.wav", "rb") as f:
        r = client.post("/api/search", files={"audio": ("silent.wav", f, "audio/wav")})
    assert r.status_code == 400 and "audio file 'silent.wav' is silent" in r.json()["error"]


def test_the_form_offers_every_modality_of_the_model(client):
    page = client.get("/").text
    for field in ('id="image"', 'id="audio"', 'id="text"', 'id="weight_audio"', 'id="record"'):
        assert field in page


@pytest.mark.parametrize("head, kind", [
    (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff\xe0", "image/jpeg"), (b"GIF89a", "image/gif"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"), (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
    (b"fLaC", "audio/flac"), (b"OggS", "audio/ogg"), (b"ID3\x04", "audio/mpeg"),
    (b"\x00\x00\x00\x18ftypisom", "video/mp4"), (b"\x1a\x45\xdf\xa3", "video/webm"),
    (b"<html><script>", "application/octet-stream"), (b"<svg xmlns=", "application/octet-stream"),
    (b"", "application/octet-stream"),
])
def test_sniffing(head, kind):
    assert sniff_bytes(head) == kind
