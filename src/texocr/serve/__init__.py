"""`texocr serve`: the HTTP API and the web page over one `Recognizer`.

    texocr serve                                        # texocr's own model on http://127.0.0.1:8000 (page at /)
    texocr serve --model runs/x/model --adapter runs/x/adapter --host 0.0.0.0 --port 8080
    texocr serve --config runs/x/config.yaml --serve.max_batch 8   # a run's model and serve keys; flags win
    texocr serve --api-key-file keys.txt                # /v1/ then needs `Authorization: Bearer KEY`

Routes: `POST /v1/predict` (images -> LaTeX), `POST /v1/render` (LaTeX -> PNG), `GET /v1/model`, `GET /health`,
`GET /openapi.json`, and the page at `/`. Concurrent requests are batched into one model call
(`--max-batch`, `--batch-wait-ms`); see `texocr.serve.app` for limits and errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from texocr.data.images import GLYPH_HEIGHT_HELP

# flag -> (ServeConfig key, type, metavar, help); every flag overrides the config's key of the same name
FLAGS: dict[str, tuple[str, type, str, str]] = {
    "--host": ("host", str, "HOST", "address to listen on (default 127.0.0.1: this machine only)"),
    "--port": ("port", int, "PORT", "port (default 8000)"),
    "--max-batch": ("max_batch", int, "N", "most images in one model call (1: no batching; default 16)"),
    "--batch-wait-ms": ("batch_wait_ms", float, "MS", "how long a first image waits for others to batch with (default 5)"),
    "--max-queue": ("max_queue", int, "N", "images queued at once; more are answered 503 + Retry-After (default 64)"),
    "--max-images": ("max_images", int, "N", "images in one request (default 16)"),
    "--max-image-bytes": ("max_image_bytes", int, "BYTES", "bytes of one image (default 10,000,000)"),
    "--max-image-pixels": ("max_image_pixels", int, "PIXELS", "pixels of one image, from its header (default 16,000,000)"),
    "--max-request-bytes": ("max_request_bytes", int, "BYTES", "bytes of one request body (default 32,000,000)"),
    "--timeout": ("request_timeout_s", float, "SECONDS", "seconds a request may wait for the model (default 60)"),
    "--api-key-file": ("api_key_file", str, "FILE", "file of API keys, one per line; /v1/ then needs one"),
    "--max-new-tokens": ("max_new_tokens", int, "N", "longest LaTeX generated, in tokens (default 256)"),
    "--glyph-height": ("glyph_height", float, "PX", GLYPH_HEIGHT_HELP),
    "--device": ("device", str, "DEVICE", "cuda, mps or cpu (default: the best available)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="default, a local model directory or a hub id (default: the config's model)")
    p.add_argument("--adapter", help="a LoRA adapter directory to load on top of --model")
    p.add_argument("--config", help="a YAML config (e.g. a training run's config.yaml): its model and serve "
                                    "sections; dotted overrides follow (--serve.max_batch 8)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=None)
    for flag, (key, tp, metavar, help_text) in FLAGS.items():
        p.add_argument(flag, dest=f"serve_{key}", type=tp, metavar=metavar, help=help_text)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(_accepts_overrides=True)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from texocr.config import load_config
    from texocr.serve.app import create_app, read_api_keys
    from texocr.serve.model import describe, load_recognizer

    cfg = load_config(args.config, args.overrides)
    serve = dataclasses.replace(cfg.serve, **{key: getattr(args, f"serve_{key}") for key, *_ in FLAGS.values()
                                              if getattr(args, f"serve_{key}") is not None})
    model = args.model or cfg.model.name_or_path
    adapter = args.adapter or cfg.model.adapter
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = read_api_keys(serve.api_key_file) if serve.api_key_file else None  # fail before the slow model load
    log = logging.getLogger("texocr.serve")
    log.info("loading %s%s", model, f" + {adapter}" if adapter else "")
    rec = load_recognizer(model, adapter, serve, dtype=args.dtype or cfg.model.dtype)
    app = create_app(rec, serve, info=describe(rec, model, adapter), api_keys=keys)
    log.info("serving on http://%s:%d/ (API: /v1/predict, schema: /openapi.json)%s", serve.host, serve.port,
             ", API key required" if keys else "")
    uvicorn.run(app, host=serve.host, port=serve.port, log_level=args.log_level, access_log=False)
    return 0
