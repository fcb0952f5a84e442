"""What a request to `/v1/predict` may carry, read into images, or refused with a precise `ApiError`.

Three body forms (the Content-Type decides):
- `multipart/form-data`: one or more file fields (`curl -F file=@eq.png`), in order;
- `application/json`: `{"images": ["<base64>", ...]}`; a `data:image/png;base64,` prefix is allowed;
- `image/*` or `application/octet-stream`: the body is one image (`curl --data-binary @eq.png`).

A request is answered whole or refused whole: when any image is unusable, the error lists every bad image
(index, name, reason), so a client learns all its mistakes at once and no model time is spent on a part.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from texocr.config import ServeConfig
from texocr.data.images import ImageError, load_image

JSON_TYPES = ("application/json",)
MULTIPART = "multipart/form-data"
RAW_TYPES = ("application/octet-stream",)  # and image/*
ACCEPTED = "multipart/form-data, application/json or image/*"


@dataclass
class ApiError(Exception):
    """A refused request: HTTP `status`, a short machine-readable `code`, a sentence for a person."""

    status: int
    code: str
    message: str
    details: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class BodyTooLarge(Exception):
    """Raised from the body-limit middleware's `receive` once a body passes `max_request_bytes`."""


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_uploads(request: Request, cfg: ServeConfig) -> list[tuple[str, bytes]]:
    """`(name, bytes)` per image of the request, in order; `ApiError` for a body that cannot be one."""
    kind = media_type(request)
    try:
        if kind == MULTIPART:
            items = await _multipart(request, cfg)
        elif kind in JSON_TYPES or kind.endswith("+json"):
            items = _json_images(await request.body(), cfg)
        elif kind.startswith("image/") or kind in RAW_TYPES:
            body = await request.body()
            items = [("body", body)] if body else []
        elif not kind:
            raise ApiError(415, "unsupported_media_type", f"no Content-Type; send {ACCEPTED}")
        else:
            raise ApiError(415, "unsupported_media_type", f"Content-Type {kind!r} is not accepted; send {ACCEPTED}")
    except BodyTooLarge:
        raise ApiError(413, "request_too_large", f"the request body is over {cfg.max_request_bytes:,} bytes") from None
    if not items:
        raise ApiError(400, "no_images", "the request carries no image")
    if len(items) > cfg.max_images:
        raise ApiError(413, "too_many_images", f"{len(items)} images in one request; the limit is {cfg.max_images}")
    for i, (name, data) in enumerate(items):
        if len(data) > cfg.max_image_bytes:
            raise ApiError(413, "image_too_large", f"image {i} ({name}) is {len(data):,} bytes; "
                           f"the limit is {cfg.max_image_bytes:,}", details=[{"index": i, "name": name}])
    return items


async def _multipart(request: Request, cfg: ServeConfig) -> list[tuple[str, bytes]]:
    try:
        # one more than allowed, so "too many images" is our clear 413 rather than the parser's generic 400
        form = await request.form(max_files=cfg.max_images + 1, max_fields=cfg.max_images + 8)
    except HTTPException as e:  # starlette's verdict on a malformed multipart body
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {e.detail}") from None
    try:
        items = []
        for key, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise ApiError(400, "not_a_file", f"form field {key!r} is text, not a file "
                               "(with curl: -F file=@eq.png, note the @)")
            # read one byte past the limit: enough to know it is too large without holding a huge file
            items.append((value.filename or key, await value.read(cfg.max_image_bytes + 1)))
        return items
    finally:
        await form.close()


def _json_images(body: bytes, cfg: ServeConfig) -> list[tuple[str, bytes]]:
    if not body:
        raise ApiError(400, "empty_body", 'empty JSON body; send {"images": ["<base64>", ...]}')
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {e}"[:300]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ApiError(400, "bad_json", 'expected an object {"images": ["<base64>", ...]}')
    extra = set(doc) - {"images"}
    if extra:
        raise ApiError(400, "bad_json", f"unknown keys {sorted(extra)}; the only key is 'images'")
    images = doc["images"]
    if len(images) > cfg.max_images:
        raise ApiError(413, "too_many_images", f"{len(images)} images in one request; the limit is {cfg.max_images}")
    encoded_limit = (cfg.max_image_bytes + 2) // 3 * 4 + 100  # base64 of the largest allowed image, with a prefix
    out = []
    for i, item in enumerate(images):
        if not isinstance(item, str):
            raise ApiError(400, "bad_json", f"images[{i}] is a {type(item).__name__}, not a base64 string")
        if len(item) > encoded_limit:
            raise ApiError(413, "image_too_large", f"images[{i}] is over {cfg.max_image_bytes:,} bytes",
                           details=[{"index": i}])
        out.append((f"images[{i}]", _b64(item, i)))
    return out


def _b64(text: str, i: int) -> bytes:
    if text.startswith("data:"):  # a data URL, as a browser's FileReader or canvas.toDataURL gives
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, "bad_base64", f"images[{i}] is a data URL without ';base64,'")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(400, "bad_base64", f"images[{i}] is not valid base64: {e}") from None
    if not data:
        raise ApiError(400, "bad_base64", f"images[{i}] is empty")
    return data


def decode_images(items: list[tuple[str, bytes]], cfg: ServeConfig) -> list[Any]:
    """PIL images (RGB) for the uploads, or one `ApiError` naming every unusable one (runs in a worker thread)."""
    images, bad = [], []
    for i, (name, data) in enumerate(items):
        try:
            img = load_image(data, max_pixels=cfg.max_image_pixels)
            lo, hi = img.convert("L").getextrema()
            if hi - lo < 8:  # the Recognizer refuses these too; say so before it is queued
                raise ImageError("blank_image", "a single colour: no formula to read")
            images.append(img)
        except ImageError as e:
            bad.append({"index": i, "name": name, "reason": e.reason, "message": str(e)})
    if bad:
        first = bad[0]
        # 413 when size is the only problem (a bomb, a giant scan): the client must send less, not other data
        status = 413 if all(b["reason"] == "too_large" for b in bad) else 422
        where = f"image {first['index']} ({first['name']})"
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ApiError(status, first["reason"], f"{where}: {first['message']}{more}", details=bad)
    return images
