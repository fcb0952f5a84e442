"""The HTTP API with texocr's shipped model: every bad input gets its 4xx JSON error, and the server still answers
a good request correctly afterwards; busy and timed-out requests get 503 + Retry-After; the event loop never
waits for the model; API keys; the `texocr serve` command itself."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient

from texocr.config import ServeConfig
from texocr.serve.app import create_app
from texocr.serve.model import describe, load_recognizer

LIMITS = {"max_images": 4, "max_queue": 8, "max_image_bytes": 200_000, "max_request_bytes": 1_000_000,
              "max_image_pixels": 4_000_000, "max_new_tokens": 64}


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def rec():
    return load_recognizer("default", None, ServeConfig(**LIMITS))


@pytest.fixture(scope="module")
def good(rec) -> tuple[bytes, str]:
    """A formula image and what the Recognizer itself reads in it (the API must answer the same)."""
    try:
        from texocr.data.render import get_renderer

        img = get_renderer("auto").render_batch([r"\frac{a+b}{c}"], dpi=200)[0]
    except Exception:  # noqa: BLE001 - no renderer: a drawn formula still makes a valid request
        img = Image.new("RGB", (160, 48), "white")
        ImageDraw.Draw(img).text((8, 16), "x + 1", fill="black")
    expected = rec.predict([img])[0].text
    assert expected
    return _png(img), expected


@pytest.fixture(scope="module")
def client(rec):
    cfg = ServeConfig(**LIMITS)
    with TestClient(create_app(rec, cfg, info=describe(rec, "default", None))) as c:
        yield c


def _huge_header_png(w: int = 9000, h: int = 8000) -> bytes:
    """A tiny PNG whose header claims w x h pixels: must be refused before decoding."""
    data = bytearray(_png(Image.new("L", (8, 8), 255)))
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _zlib_bomb() -> bytes:
    """A real, fully valid 5000 x 5000 PNG of 25 M pixels that compresses to a few kB."""
    return _png(Image.new("L", (5000, 5000), 255))


def _multipart(*files: bytes, name: str = "file") -> dict:
    return {"files": [(name, (f"f{i}.png", data, "image/png")) for i, data in enumerate(files)]}


def _assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["message"] and "Traceback" not in r.text
    return err


def _assert_good(client: TestClient, good: tuple[bytes, str]) -> None:
    r = client.post("/v1/predict", **_multipart(good[0]))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["latex"] == good[1]


def _bad_cases(good_png: bytes) -> list[tuple[str, dict, int, str]]:
    truncated = good_png[: len(good_png) // 2]
    text = b"this is a text file, not an image\n" * 4
    b64 = base64.b64encode(good_png).decode()
    json_h = {"Content-Type": "application/json"}
    return [
        ("truncated image", _multipart(truncated), 422, "corrupt_image"),
        ("non-image", _multipart(text), 422, "not_an_image"),
        ("zero-byte file", _multipart(b""), 422, "not_an_image"),
        ("one pixel", _multipart(_png(Image.new("RGB", (1, 1)))), 422, "too_small"),
        ("blank", _multipart(_png(Image.new("RGB", (90, 30), "white"))), 422, "blank_image"),
        ("header bomb", _multipart(_huge_header_png()), 413, "too_large"),
        ("zlib bomb", _multipart(_zlib_bomb()), 413, "too_large"),
        ("one bad among good", _multipart(good_png, text), 422, "not_an_image"),
        ("oversized image", _multipart(os.urandom(LIMITS["max_image_bytes"] + 10)), 413, "image_too_large"),
        ("oversized body", {"content": b"\0" * (LIMITS["max_request_bytes"] + 1),
                            "headers": {"Content-Type": "image/png"}}, 413, "request_too_large"),
        ("too many images", _multipart(*[good_png] * (LIMITS["max_images"] + 1)), 413, "too_many_images"),
        ("text form field", {"data": {"file": "eq.png"}, "files": {"x": ("a.png", good_png)}}, 400, "not_a_file"),
        ("zero-byte multipart", {"content": b"", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
         400, "no_images"),
        ("multipart, no boundary", {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}},
         400, "bad_multipart"),
        ("zero-byte raw", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "no_images"),
        ("zero-byte JSON", {"content": b"", "headers": json_h}, 400, "empty_body"),
        ("text/plain", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ("no content type", {"content": good_png, "headers": {"Content-Type": ""}}, 415, "unsupported_media_type"),
        ("urlencoded form", {"data": {"images": "x"}}, 415, "unsupported_media_type"),
        ("malformed JSON", {"content": b'{"images": [', "headers": json_h}, 400, "bad_json"),
        ("JSON not UTF-8", {"content": b'{"images": ["\xff"]}', "headers": json_h}, 400, "bad_json"),
        ("JSON list", {"json": [b64]}, 400, "bad_json"),
        ("JSON no images", {"json": {"image": b64}}, 400, "bad_json"),
        ("JSON empty list", {"json": {"images": []}}, 400, "no_images"),
        ("JSON number", {"json": {"images": [12]}}, 400, "bad_json"),
        ("bad base64", {"json": {"images": ["not base64!!"]}}, 400, "bad_base64"),
        ("base64 wrong padding", {"json": {"images": [b64[:-3]]}}, 400, "bad_base64"),
        ("data URL, no base64", {"json": {"images": ["data:image/png," + b64]}}, 400, "bad_base64"),
        ("JSON too many", {"json": {"images": [b64] * (LIMITS["max_images"] + 1)}}, 413, "too_many_images"),
        ("JSON base64 of text", {"json": {"images": [base64.b64encode(text).decode()]}}, 422, "not_an_image"),
    ]


def test_bad_inputs_get_their_4xx_and_lose_nothing(client, good):
    for label, kwargs, status, code in _bad_cases(good[0]):
        r = client.post("/v1/predict", **kwargs)
        err = _assert_error(r, status, code)
        if code in ("corrupt_image", "not_an_image", "too_large") and "files" in kwargs:
            assert err["details"][-1]["reason"] == code, label
        _assert_good(client, good)  # the server is unharmed and still right


def test_good_requests_in_every_form(client, good):
    png, expected = good
    b64 = base64.b64encode(png).decode()
    forms = [_multipart(png), _multipart(png, name="image"), {"json": {"images": [b64]}},
             {"json": {"images": ["data:image/png;base64," + b64]}},
             {"content": png, "headers": {"Content-Type": "image/png"}}]
    for kwargs in forms:
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        assert res["latex"] == expected and res["valid"] is True
        assert res["stop"] == "end" and res["tokens"] > 0 and res["timing"]["batch_size"] >= 1
    r = client.post("/v1/predict", **_multipart(png, png, png))
    assert [x["latex"] for x in r.json()["results"]] == [expected] * 3
    assert r.json()["results"][0]["timing"]["batch_size"] == 3  # one model call for the request's images


def test_other_routes_and_errors(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["pending"] == 0 and h["images"] > 0
    m = client.get("/v1/model").json()
    assert m["family"] == "qwen2_vl" and m["card"].startswith("texocr default model")
    assert m["image_budget"]["max_pixels"] == 200704 and m["limits"]["max_images"] == LIMITS["max_images"]
    assert len(m["weights_sha256"]) == 16 and m["parameters"] > 1_000_000
    _assert_error(client.get("/nope"), 404, "not_found")
    _assert_error(client.get("/v1/predict"), 405, "method_not_allowed")
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("static/app.js", "static/katex/katex.min.js", "static/katex/fonts/KaTeX_Main-Regular.woff2"):
        assert client.get("/" + asset).status_code == 200, asset
    assert client.get("/static/katex/LICENSE").text.startswith("The MIT License")
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/render", "/v1/model", "/health"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


# ---------------------------------------------------------------- rendering untrusted LaTeX


@pytest.mark.parametrize("latex", [
    r"\input{/etc/passwd}", r"\include{/etc/hostname}", r"\openin1=/etc/passwd \read1 to \x \x",
    r"\immediate\write18{touch /tmp/pwned}", r"\write18{id}", r"\csname input\endcsname{/etc/passwd}",
    "^^5cinput{/etc/passwd}", r"\catcode`\^^@=0", r"\def\x{\input{/etc/passwd}}\x", r"\openout1=x.tex",
    r"\begin{filecontents}{x}a\end{filecontents}", r"\usepackage{shellesc}", r"\expandafter\input\x",
])
def test_render_refuses_file_and_shell_access(client, latex):
    _assert_error(client.post("/v1/render", json={"latex": latex}), 422, "forbidden")


def test_render_endpoint(client):
    from texocr.data.render import available_renderers

    if not available_renderers():
        pytest.skip("no renderer (TeX or the render extra) installed")
    r = client.post("/v1/render", json={"latex": r"\frac{a}{b}", "dpi": 120})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.height > img.width * 0.8  # a fraction is taller than wide-ish, and really drawn
    _assert_error(client.post("/v1/render", json={"latex": r"\frac{a}{b"}), 422, "unbalanced")
    _assert_error(client.post("/v1/render", json={"latex": "x", "dpi": 5000}), 422, "invalid_request")
    _assert_error(client.post("/v1/render", json={"latex": "x", "font": "y"}), 422, "invalid_request")
    _assert_error(client.post("/v1/render", content=b"{", headers={"Content-Type": "application/json"}),
                  400, "bad_json")
    _assert_error(client.post("/v1/render", content=b"x", headers={"Content-Type": "text/plain"}),
                  415, "unsupported_media_type")


# ---------------------------------------------------------------- API keys


def test_api_keys(rec, good, tmp_path):
    from texocr.errors import TexocrError
    from texocr.serve.app import read_api_keys

    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("# one key per line\nsecret-one\n\nsecret-two\n")
    keys = read_api_keys(str(keyfile))
    assert keys == ["secret-one", "secret-two"]
    (tmp_path / "empty.txt").write_text("# none\n")
    with pytest.raises(TexocrError, match="holds no key"):
        read_api_keys(str(tmp_path / "empty.txt"))
    app = create_app(rec, ServeConfig(**LIMITS), info={}, api_keys=keys)
    with TestClient(app) as c:
        _assert_error(c.post("/v1/predict", **_multipart(good[0])), 401, "missing_api_key")
        _assert_error(c.get("/v1/model"), 401, "missing_api_key")
        _assert_error(c.post("/v1/predict", headers={"Authorization": "Bearer secret-on"}, **_multipart(good[0])),
                      403, "wrong_api_key")
        _assert_error(c.post("/v1/predict", headers={"X-API-Key": "secret-one\u00e9".encode("latin-1")}, **_multipart(good[0])),
                      403, "wrong_api_key")
        _assert_error(c.post("/v1/render", json={"latex": "x"}), 401, "missing_api_key")
        for headers in ({"Authorization": "Bearer secret-two"}, {"X-API-Key": "secret-one"}):
            r = c.post("/v1/predict", headers=headers, **_multipart(good[0]))
            assert r.status_code == 200 and r.json()["results"][0]["latex"] == good[1]
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # open: liveness, the page
        assert "HTTPBearer" in json.dumps(c.get("/openapi.json").json()["components"])


# ---------------------------------------------------------------- busy, timeouts, a free event loop


class _Gated:
    """The real recognizer, held at a gate before each model call: a model that is busy for as long as we like."""

    def __init__(self, rec) -> None:
        self.rec, self.gate, self.calls = rec, threading.Event(), 0

    def predict(self, images, **kw):
        self.calls += 1
        assert self.gate.wait(30), "gate never opened"
        return self.rec.predict(images, **kw)


def test_full_queue_is_503_with_retry_after_and_health_stays_live(rec, good):
    gated = _Gated(rec)
    cfg = ServeConfig(**{**LIMITS, "max_images": 1, "max_queue": 2, "max_batch": 1})
    app = create_app(gated, cfg, info={})

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            first = [asyncio.create_task(c.post("/v1/predict", **_multipart(good[0]))) for _ in range(2)]
            while app.state.batcher.pending < 2:
                await asyncio.sleep(0.01)
            busy = await c.post("/v1/predict", **_multipart(good[0]))
            t0 = time.perf_counter()
            health = await c.get("/health")  # answered while the model is stuck: the loop is not blocked
            health_s = time.perf_counter() - t0
            gated.gate.set()
            return busy, health, health_s, await asyncio.gather(*first)

    busy, health, health_s, done = asyncio.run(scenario())
    _assert_error(busy, 503, "busy")
    assert int(busy.headers["retry-after"]) >= 1
    assert health.status_code == 200 and health.json()["pending"] == 2 and health_s < 5
    assert [r.json()["results"][0]["latex"] for r in done] == [good[1]] * 2
    app.state.batcher.close()


def test_timeout_is_503_and_frees_the_queue(rec, good):
    gated = _Gated(rec)
    cfg = ServeConfig(**{**LIMITS, "request_timeout_s": 0.3, "max_batch": 1})
    app = create_app(gated, cfg, info={})
    with TestClient(app) as c:
        first = threading.Thread(target=lambda: c.post("/v1/predict", **_multipart(good[0])))
        first.start()  # occupies the model, held at the gate
        while gated.calls < 1:
            time.sleep(0.01)
        _assert_error(c.post("/v1/predict", **_multipart(good[0])), 503, "timeout")  # queued behind it, gave up
        assert app.state.batcher.pending == 1  # the abandoned request left the queue; only the running one stays
        gated.gate.set()
        first.join(30)
        cfg.request_timeout_s = 30
        _assert_good(c, good)
    assert gated.calls == 2  # the timed-out request never reached the model


# ---------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_texocr_serve_command(tmp_path, good):
    """`texocr serve` as a user starts it: config file, flags over its keys, API key file, request logs."""
    port = _free_port()
    (tmp_path / "keys.txt").write_text("k1\n")
    (tmp_path / "run.yaml").write_text(f"serve:\n  port: 1\n  max_images: 2\n  api_key_file: {tmp_path / 'keys.txt'}\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "texocr", "serve", "--config", str(tmp_path / "run.yaml"), "--port", str(port),
           "--serve.max_queue", "7", "--max-new-tokens", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        key = {"Authorization": "Bearer k1"}
        limits = httpx.get(base + "/v1/model", headers=key).json()["limits"]
        assert limits["max_images"] == 2 and limits["max_queue"] == 7  # from the file, and from an override
        assert httpx.post(base + "/v1/predict", files={"file": ("a.png", good[0])}).status_code == 401
        r = httpx.post(base + "/v1/predict", files={"file": ("a.png", good[0])}, headers=key, timeout=60)
        assert r.status_code == 200 and r.json()["results"][0]["latex"] == good[1]
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "POST /v1/predict 401" in out and "POST /v1/predict 200" in out and "images=1" in out
    assert "Traceback" not in out
