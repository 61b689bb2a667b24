"""binder serve: the search page, driven in a real browser (Debian's chromium through Playwright).

The browser is found at ``$BINDER_CHROMIUM`` or ``/usr/bin/chromium``; without it the browser
tests skip, unless ``BINDER_REQUIRE_BROWSER=1`` (CI installs it and sets that), when they fail.
Chromium's fake media devices stand in for a microphone, so recording is exercised too.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from binder.index import Index
from binder.server import create_app

from helpers import write_blobs

CHROMIUM = os.environ.get("BINDER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("BINDER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"no chromium at {CHROMIUM} (BINDER_REQUIRE_BROWSER=1): apt-get install chromium")
        pytest.skip("chromium not installed (apt-get install chromium, or set BINDER_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield b
        b.close()


def serve(index: Index):
    """Run the app with uvicorn on a free port in a thread -> (base URL, server)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the search page did not start"
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    write_blobs(root, [f"p{i:02d}.png" for i in range(12)])
    t = np.arange(16000) / 16000
    sf.write(root / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    sf.write(root / "silent.wav", np.zeros(16000, np.float32), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def site(audio_model, files, tmp_path_factory):
    index = Index.build(audio_model, sorted(files.glob("p*.png")), "image", tmp_path_factory.mktemp("idx") / "i",
                        num_workers=0, progress=False)
    url, server = serve(index)
    yield url
    server.should_exit = True


def search(page, url, **fields):
    page.goto(url)
    for name in ("image", "audio"):
        if name in fields:
            page.set_input_files(f"#{name}", str(fields[name]))
    if "text" in fields:
        page.fill("#text", fields["text"])
    for name, value in fields.get("weights", {}).items():
        page.fill(f"#weight_{name}", str(value))
    page.fill("#k", str(fields.get("k", 5)))
    with page.expect_navigation():
        page.click("#submit")


def until(page, condition: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` with ``page.evaluate`` (Playwright's wait_for_function evaluates strings
    in a way the page's Content-Security-Policy forbids, as it should)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        page.wait_for_timeout(50)


def test_search_page_shows_a_gallery_of_hits(browser, site, files, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    search(page, site, image=files / "p03.png", audio=files / "tone.wav", text="a photo",
           weights={"image": 0.6, "audio": 0.3, "text": 0.1}, k=6)
    cards = page.locator(".hit")
    assert cards.count() == 6
    assert "p03.png" in cards.nth(0).inner_text()  # the image itself dominates a 0.6 image weight here
    scores = [float(s) for s in page.locator(".score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    loaded = page.evaluate("[...document.querySelectorAll('.hit img')].map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == 6 and all(w > 0 for w in loaded), "every thumbnail is served and decoded"
    assert page.input_value("#weight_image") == "0.6"  # the form keeps the query's settings
    echo = page.locator("#query-echo")  # the query is shown back: its image, a player for its sound, its text
    assert echo.locator("img").evaluate("i => i.complete && i.naturalWidth") > 0
    assert echo.locator("audio").count() == 1 and "tone.wav" in echo.inner_text() and "a photo" in echo.inner_text()
    shot = tmp_path / "results.png"
    page.screenshot(path=str(shot), full_page=True)
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape[1] == 1100 and img.shape[0] >= 400
    box = cards.nth(0).locator("img").bounding_box()  # the first thumbnail is drawn: not a blank area
    thumb = img[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
    assert thumb.size and thumb.std() > 10
    page.close()


@pytest.mark.parametrize("upload, message", [
    ({"image": "notes.txt"}, "is not a readable image"),
    ({"audio": "silent.wav"}, "is silent"),
    ({"audio": "corrupt.wav"}, "is not readable audio"),
    ({}, "give a query"),
])
def test_bad_uploads_show_a_message(browser, site, files, upload, message):
    page = browser.new_page()
    page.goto(site)
    for name, file in upload.items():
        page.set_input_files(f"#{name}", str(files / file))
    with page.expect_navigation() as nav:
        page.click("#submit")
    assert nav.value.status == 400
    text = page.inner_text("#message")
    assert message in text and "Traceback" not in page.content()
    if upload:
        assert next(iter(upload.values())) in text and "binder-serve-" not in text  # the upload's name, not a temp path
    page.close()


def test_recording_from_the_microphone(browser, site):
    """Chromium's fake microphone: Record, Stop, the WAV lands in the audio field, Search."""
    page = browser.new_page()
    page.goto(site)
    page.click("#record")
    until(page, "document.getElementById('record').textContent === 'Stop recording'")
    page.wait_for_timeout(800)
    page.click("#record")
    until(page, "document.getElementById('audio').files.length === 1")
    assert page.evaluate("document.getElementById('audio').files[0].name") == "recording.wav"
    with page.expect_navigation() as nav:
        page.click("#submit")
    assert nav.value.status == 200 and page.locator(".hit").count() == 10  # the form's default k
    page.close()


def test_audio_hits_play(browser, audio_model, data_root, tmp_path):
    recs = sorted((data_root / "fsdd" / "recordings").glob("4_george_*.wav"))[:5]
    index = Index.build(audio_model, recs, "audio", tmp_path / "a", num_workers=0, progress=False)
    url, server = serve(index)
    try:
        page = browser.new_page()
        search(page, url, audio=recs[1], k=3)
        players = page.locator(".hit audio")
        assert players.count() == 3
        src = players.nth(0).get_attribute("src")
        response = page.request.get(url + src)
        assert response.status == 200 and response.body()[:4] == b"RIFF"
        duration = page.evaluate("""async () => { const a = document.querySelector('.hit audio');
            a.load(); await new Promise(r => a.addEventListener('loadedmetadata', r, {once: true}));
            return a.duration; }""")
        assert duration == pytest.approx(sf.info(str(recs[1])).duration, abs=0.05)
        assert page.request.get(url + "/media/999").status == 404
        page.close()
    finally:
        server.should_exit = True


def test_json_api(site, files):
    import httpx

    with open(files / "p05.png", "rb") as f:
        r = httpx.post(site + "/api/search", files={"image": ("p05.png", f, "image/png")}, data={"k": "2"})
    assert r.status_code == 200 and [h["rank"] for h in r.json()["hits"]] == [1, 2]
    assert r.json()["hits"][0]["path"].endswith("p05.png")
    r = httpx.post(site + "/api/search", data={"text": "a", "weight_text": "-1"})
    assert r.status_code == 400 and "finite number >= 0" in r.json()["error"]
