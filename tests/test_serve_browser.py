"""The page at `/` driven in headless Chromium against a real server with texocr's shipped model.

Upload an image -> its LaTeX appears; draw strokes -> a result; paste an image -> a result; edit the LaTeX ->
the KaTeX rendering changes. Screenshots of each state go to $TEXOCR_SCREENSHOTS (default: a temporary folder).

Skipped without the `playwright` package or Debian's /usr/bin/chromium (`apt-get install -y chromium`);
Playwright's own browser download is never used.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`texocr serve` with the shipped model, in a thread of this process, on a free loopback port."""
    uvicorn = pytest.importorskip("uvicorn")
    from texocr.config import ServeConfig
    from texocr.serve.app import create_app
    from texocr.serve.model import describe, load_recognizer

    cfg = ServeConfig(port=_free_port(), max_new_tokens=64)
    rec = load_recognizer("default", None, cfg)
    app = create_app(rec, cfg, info=describe(rec, "default", None))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=cfg.port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{cfg.port}/"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("TEXOCR_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def formula_png() -> bytes:
    """A printed formula the shipped model reads exactly: `\\frac { a + b } { c }`."""
    from texocr.data.render import get_renderer

    try:
        img = get_renderer("auto").render_batch([r"\frac{a+b}{c}"], dpi=200)[0]
    except Exception as e:  # noqa: BLE001 - no renderer here: the page test needs a real formula image
        pytest.skip(f"no renderer for the test image: {e}")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _done(page, n: int) -> None:
    """Wait until the page has finished its n-th recognition (success or error)."""
    page.wait_for_function("n => Number(document.body.dataset.done || 0) >= n", arg=n, timeout=60_000)


def test_page_upload_draw_paste_edit(server, browser, shots, formula_png, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 760})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server, wait_until="load")
    page.wait_for_function("() => document.getElementById('model').textContent.length > 0")
    assert "default model" in page.inner_text("#model")
    page.screenshot(path=str(shots / "0-empty.png"))

    # 1. upload: the real model reads this printed formula exactly
    img_path = tmp_path / "frac.png"
    img_path.write_bytes(formula_png)
    page.set_input_files("#file", str(img_path))
    _done(page, 1)
    assert page.input_value("#latex") == r"\frac { a + b } { c }", page.inner_text("#status")
    assert page.locator("#rendered .katex .mfrac").count() == 1  # KaTeX drew a fraction
    assert page.locator("#recent li").count() == 1
    page.screenshot(path=str(shots / "1-upload.png"))

    # 2. draw: three strokes (an "x" and a "2" above it), undo the last, redraw it; then read the drawing
    box = page.locator("#pad").bounding_box()
    ink = "() => { const c = document.getElementById('pad'); const d = c.getContext('2d')" \
          ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4)" \
          " n += d[i] < 128; return n; }"

    def stroke(points):
        page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
        page.mouse.up()

    stroke([(120, 90), (190, 170)])
    stroke([(190, 90), (120, 170)])
    two_strokes = page.evaluate(ink)
    two = [(205, 70), (215, 60), (230, 62), (232, 75), (205, 100), (235, 100)]
    stroke(two)
    assert page.evaluate(ink) > two_strokes
    page.click("#undo")
    assert page.evaluate(ink) == two_strokes  # undo removed exactly the last stroke
    page.fill("#width", "6")
    stroke(two)
    page.click("#recognize")
    _done(page, 2)
    drawn = page.input_value("#latex")
    assert drawn.strip() and page.locator("#status.bad").count() == 0, page.inner_text("#status")
    assert page.locator("#recent li").count() == 2
    page.screenshot(path=str(shots / "2-draw.png"))
    page.click("#clear")
    assert page.evaluate(ink) == 0

    # 3. paste: a clipboard event carrying an image file, as Ctrl+V of a screenshot gives
    page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'clip.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true}));
    }""", base64.b64encode(formula_png).decode())
    _done(page, 3)
    assert page.input_value("#latex") == r"\frac { a + b } { c }"
    assert page.locator("#recent li").count() == 3
    page.screenshot(path=str(shots / "3-paste.png"))

    # 4. edit: the rendering follows the text
    before = page.inner_html("#rendered")
    page.fill("#latex", r"\sqrt { x ^ { 2 } + 1 } = \sum _ { i = 1 } ^ { n } i")
    page.wait_for_function("() => document.querySelector('#rendered .sqrt') !== null")
    assert page.inner_html("#rendered") != before
    assert page.locator("#rendered .mfrac").count() == 0 and page.locator("#rendered .op-symbol").count() == 1
    page.fill("#latex", r"\frac { a } {")  # half typed: an error shown, the last good rendering kept
    assert page.inner_text("#render-error")
    assert page.locator("#rendered .sqrt").count() == 1
    page.fill("#latex", r"\int _ { 0 } ^ { 1 } x ^ { 2 } d x = \frac { 1 } { 3 }")
    page.wait_for_function("() => document.querySelector('#rendered .op-symbol') !== null"
                           " && document.getElementById('render-error').textContent === ''")
    page.screenshot(path=str(shots / "4-edit.png"))

    # everything the page loaded came from this server: no CDN
    assert requested and all(u.startswith((server, "blob:", "data:")) for u in requested), requested
    assert not errors, errors
    page.close()
