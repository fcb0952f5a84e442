"""The server's one way to load a model, and what `/v1/model` says about it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from texocr import __version__
from texocr.config import ServeConfig

_HASH_LIMIT = 512 * 1024 * 1024  # hashing a multi-GB checkpoint at start-up would delay serving by minutes


def load_recognizer(model: str, adapter: str | None, cfg: ServeConfig, *, dtype: str | None = None) -> Any:
    """A `Recognizer` for `model` (+ `adapter`). The only call into the loading API, kept in one place so
    that a change of `Recognizer.load`'s signature is one edit here."""
    from texocr.infer import Recognizer

    return Recognizer.load(model, adapter, device=cfg.device, dtype=dtype, batch_size=cfg.max_batch,
                           max_new_tokens=cfg.max_new_tokens, glyph_height=cfg.glyph_height)


def _card_title(folder: Path) -> str | None:
    """The model card's first heading (texocr's model: `texocr default model, v5 (2026-12-01)`)."""
    try:
        lines = (folder / "README.md").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return next((ln.lstrip("# ").strip() for ln in lines if ln.startswith("#")), None)


def _weights_digest(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors"))
    if not files or sum(f.stat().st_size for f in files) > _HASH_LIMIT:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def image_budget(processor: Any) -> dict[str, int | None]:
    """Pixels an image is resized into (dynamic-resolution families), as the processor is configured."""
    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
    lo = getattr(ip, "min_pixels", None) or get("shortest_edge")
    hi = getattr(ip, "max_pixels", None) or get("longest_edge")
    if lo is None and hi is None and get("height") and get("width"):  # fixed-size families (PaliGemma)
        lo = hi = get("height") * get("width")
    return {"min_pixels": lo, "max_pixels": hi}


def describe(rec: Any, model: str, adapter: str | None) -> dict[str, Any]:
    """What is loaded: names, version, image budget; computed once at start-up."""
    from texocr.infer import resolve_model

    path = Path(resolve_model(model))
    local = path.is_dir()
    try:
        max_tokens = int(rec.family.max_image_tokens(rec.processor))
    except Exception:  # noqa: BLE001 - a family without a token budget still serves
        max_tokens = None
    return {
        "model": model,
        "path": str(path) if local else None,
        "adapter": adapter,
        "family": rec.family.name,
        "card": _card_title(path) if local else None,
        "weights_sha256": _weights_digest(path) if local else None,
        "parameters": sum(p.numel() for p in rec.model.parameters()),
        "device": str(rec.device),
        "dtype": str(next(rec.model.parameters()).dtype).removeprefix("torch."),
        "image_budget": {**image_budget(rec.processor), "max_image_tokens": max_tokens},
        "max_new_tokens": rec.max_new_tokens,
        "texocr_version": __version__,
    }
