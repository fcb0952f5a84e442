"""The FastAPI application: routes, limits, API keys, JSON errors, request logs, the page's files.

    app = create_app(recognizer, ServeConfig(max_batch=16), info=describe(recognizer, "default", None))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every client mistake is a 4xx with `{"error": {"code", "message", "details"?}}`; a 5xx means a bug or an
overloaded server (503 + Retry-After), never a bad input, and no response carries a stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from texocr import __version__
from texocr.config import ServeConfig
from texocr.errors import TexocrError
from texocr.latex import is_valid
from texocr.serve.batcher import Batcher, QueueFull
from texocr.serve.inputs import (
    ApiError,
    BodyTooLarge,
    decode_images,
    media_type,
    read_uploads,
)
from texocr.serve.schemas import (
    Health,
    PredictJson,
    PredictResponse,
    RenderRequest,
    Result,
    Timing,
    error_responses,
)

log = logging.getLogger("texocr.serve")
WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# the page loads nothing from elsewhere; KaTeX sets inline styles, hence 'unsafe-inline' for styles only
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
MAX_RENDERS_WAITING = 8

_MULTIPART_SCHEMA = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
             "description": "one or more image files (any field name is read; `file` is the documented one)"}}}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
    "application/json": {"schema": PredictJson.model_json_schema()},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}}
RENDER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": RenderRequest.model_json_schema()}}}}


# ---------------------------------------------------------------- middleware


class BodyLimit:
    """Refuses bodies over `limit` bytes: at once from Content-Length, else while they stream in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            err = ApiError(413, "request_too_large", f"the request body is over {self.limit:,} bytes")
            await JSONResponse(err.body(), status_code=413, headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited, send)


class RequestLog:
    """One log line per request: method, path, status, time, images, client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            state = scope.get("state", {})
            client = scope.get("client") or ("-", 0)
            log.info("%s %s %d %.1fms images=%s client=%s", scope["method"], scope["path"], status[0] or 500,
                     (time.perf_counter() - start) * 1000, state.get("images", "-"), client[0])


# ---------------------------------------------------------------- errors


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ApiError(status, code, message).body(), status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers or None)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, e: BodyTooLarge) -> JSONResponse:
        return _error(413, "request_too_large", "the request body is too large", {"Connection": "close"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(e.status_code).phrase if e.status_code in HTTPStatus._value2member_map_ else "error"
        return _error(e.status_code, phrase.lower().replace(" ", "_").replace("-", "_"), str(e.detail),
                      getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", "; ".join(_describe(err) for err in e.errors())[:500])

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error (the server log has the details)")


def _describe(err: Any) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid"))


async def _json_model(request: Request, model: type[Any]) -> Any:
    """The body validated into `model`: 415 for a body that is not JSON, 400 if unparsable, 422 if wrong."""
    kind = media_type(request)
    if kind != "application/json" and not kind.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"Content-Type {kind or 'none'!r}; send application/json")
    try:
        body = await request.body()
    except BodyTooLarge:
        raise ApiError(413, "request_too_large", "the request body is too large") from None
    if not body:
        raise ApiError(400, "empty_body", "empty request body")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors()
        if any(err["type"] == "json_invalid" for err in errors):
            raise ApiError(400, "bad_json", f"the body is not valid JSON: {errors[0]['msg']}") from None
        raise ApiError(422, "invalid_request", "; ".join(_describe(err) for err in errors)[:500]) from None


# ---------------------------------------------------------------- auth


def read_api_keys(path: str) -> list[str]:
    """Keys from a file, one per line (blank lines and `#` comments skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TexocrError(f"cannot read the API key file {path}: {e.strerror or e}") from None
    keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not keys:
        raise TexocrError(f"the API key file {path} holds no key")
    return keys


def _auth_dependency(keys: list[str]) -> Any:
    encoded = [k.encode() for k in keys]
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="or X-API-Key: KEY")

    # FastAPI's idiom (defaults, not Annotated: with postponed annotations a closure's names do not resolve)
    async def check(cred: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
                    key: str | None = Security(header)) -> None:
        given = key if key is not None else (cred.credentials if cred is not None else None)
        if not given:
            raise ApiError(401, "missing_api_key", "this server needs an API key: Authorization: Bearer KEY "
                           "or X-API-Key: KEY", headers={"WWW-Authenticate": "Bearer"})
        # compare against every key, always: the time taken says nothing about which key came close
        matches = [hmac.compare_digest(given.encode("utf-8", "surrogateescape"), k) for k in encoded]
        if not any(matches):
            raise ApiError(403, "wrong_api_key", "the API key is not valid")

    return check


# ---------------------------------------------------------------- rendering


class _RenderService:
    """Server-side TeX (or pip) rendering of LaTeX to PNG: one render at a time, a few waiting at most."""

    def __init__(self) -> None:
        self._renderer: Any = None
        self._lock = threading.Lock()
        self.waiting = 0

    def _render(self, latex: str, dpi: int) -> Any:
        from texocr.data.render import get_renderer

        with self._lock:
            if self._renderer is None:
                self._renderer = get_renderer("auto")  # TexocrError when neither TeX nor the pip renderer is here
            return self._renderer.render_detailed([latex], dpi=dpi)[0]

    async def png(self, latex: str, dpi: int) -> bytes:
        if self.waiting >= MAX_RENDERS_WAITING:
            raise ApiError(503, "busy", "too many renders waiting", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            result = await run_in_threadpool(self._render, latex, dpi)
        except TexocrError as e:
            raise ApiError(503, "no_renderer", str(e)) from None
        finally:
            self.waiting -= 1
        if result.image is None:  # refused before TeX (forbidden, unbalanced, ...) or failed in TeX
            raise ApiError(422, result.reason or "render_error", f"cannot render: {result.reason}: {result.detail}")
        buf = io.BytesIO()
        result.image.save(buf, format="PNG")
        return buf.getvalue()


# ---------------------------------------------------------------- the app


def create_app(recognizer: Any, cfg: ServeConfig, *, info: dict[str, Any],
               api_keys: list[str] | None = None) -> FastAPI:
    """The server around a loaded `Recognizer` (anything with `predict(images) -> [Prediction]`)."""
    if cfg.max_queue < cfg.max_images:
        raise TexocrError(f"max_queue ({cfg.max_queue}) must be at least max_images ({cfg.max_images})")
    batcher = Batcher(lambda images: recognizer.predict(images, batch_size=len(images)), max_batch=cfg.max_batch,
                      wait_ms=cfg.batch_wait_ms, max_queue=cfg.max_queue)
    renders = _RenderService()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    # no /docs or /redoc: their pages load Swagger UI from a CDN, and this server must work offline
    app = FastAPI(title="texocr", version=__version__, description="Images of mathematics to LaTeX.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.batcher, app.state.config, app.state.info = batcher, cfg, info
    _install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=cfg.max_request_bytes)
    app.add_middleware(RequestLog)  # added last = outermost: it also logs what BodyLimit refuses
    auth = [Depends(_auth_dependency(api_keys))] if api_keys else []

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                              "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/health", response_model=Health, summary="liveness and queue state (no API key needed)")
    async def health() -> Health:
        return Health(status="ok", **batcher.stats())

    @app.get("/v1/model", dependencies=auth, responses=error_responses(401, 403),
             summary="what is loaded: model, version, image budget, limits")
    async def model() -> dict[str, Any]:
        limits = {k: getattr(cfg, k) for k in ("max_batch", "max_images", "max_image_bytes", "max_image_pixels",
                                               "max_request_bytes", "max_queue", "request_timeout_s")}
        return {**info, "limits": limits, "auth": bool(api_keys)}

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=auth, openapi_extra=PREDICT_BODY,
              responses=error_responses(400, 401, 403, 413, 415, 422, 503),
              summary="LaTeX for one or more images (multipart files, base64 JSON, or a raw image body)")
    async def predict(request: Request) -> PredictResponse:
        start = time.perf_counter()
        items = await read_uploads(request, cfg)
        request.state.images = len(items)
        images = await run_in_threadpool(decode_images, items, cfg)
        try:
            outs = await batcher.submit(images, timeout_s=cfg.request_timeout_s)
        except QueueFull as e:
            raise ApiError(503, "busy", f"the server is busy; retry in {e.retry_after_s} s",
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        except asyncio.TimeoutError:
            raise ApiError(503, "timeout", f"no answer within {cfg.request_timeout_s:g} s",
                           headers={"Retry-After": "5"}) from None
        failed = [{"index": i, "name": items[i][0], "message": o.output.error}
                  for i, o in enumerate(outs) if o.output.error]
        if failed:  # the processor or model could not take this image (an extreme shape, say)
            raise ApiError(422, "unreadable_image", f"the model cannot read image {failed[0]['index']}: "
                           f"{failed[0]['message']}", details=failed)
        results = [Result(latex=o.output.text, valid=is_valid(o.output.text), score=o.output.score,
                          tokens=o.output.tokens, stop=o.output.stop,
                          timing=Timing(queue_ms=round(o.queue_s * 1000, 2), model_ms=round(o.model_s * 1000, 2),
                                        batch_size=o.batch_size))
                   for o in outs]
        return PredictResponse(results=results, total_ms=round((time.perf_counter() - start) * 1000, 2))

    @app.post("/v1/render", dependencies=auth, openapi_extra=RENDER_BODY, response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "the formula as a PNG"},
                         **error_responses(400, 401, 403, 413, 415, 422, 503)},
              summary="render LaTeX to PNG on the server (TeX without file or shell access)")
    async def render(request: Request) -> Response:
        body = await _json_model(request, RenderRequest)
        return Response(await renders.png(body.latex, body.dpi), media_type="image/png")

    return app
