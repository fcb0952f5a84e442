"""The API's bodies as pydantic models: what the OpenAPI schema publishes and what responses are checked against."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from texocr.data.render import MAX_FORMULA_CHARS


class Timing(BaseModel):
    queue_ms: float = Field(description="from the request's arrival in the queue until its batch started")
    model_ms: float = Field(description="the model call this image was part of")
    batch_size: int = Field(description="images in that model call, from every request that shared it")


class Result(BaseModel):
    latex: str
    valid: bool = Field(description="the LaTeX passes texocr's structural check (balanced groups, known commands)")
    score: float | None = Field(description="mean log-probability of the generated tokens; higher is surer")
    tokens: int
    stop: str = Field(description="why generation ended: end, repetition or max_new_tokens")
    timing: Timing


class PredictResponse(BaseModel):
    results: list[Result]
    total_ms: float = Field(description="the whole request, reading and decoding the images included")


class PredictJson(BaseModel):
    """The JSON form of a predict request (documented here; the handler reads the body itself)."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1, description="base64 images (a data: URL prefix is allowed)")


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latex: str = Field(min_length=1, max_length=MAX_FORMULA_CHARS, description="LaTeX math, without $ delimiters")
    dpi: int = Field(200, ge=50, le=600)


class ErrorDetail(BaseModel):
    code: str = Field(description="short and machine-readable: not_an_image, too_large, bad_json, busy, ...")
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    pending: int = Field(description="images queued or being read now")
    batches: int
    images: int
    mean_batch: float


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer."""
    text = {400: "malformed request", 401: "missing API key", 403: "wrong API key", 413: "too large",
            415: "unsupported Content-Type", 422: "unusable input", 503: "busy or timed out (see Retry-After)"}
    return {c: {"model": ErrorResponse, "description": text[c]} for c in codes}
