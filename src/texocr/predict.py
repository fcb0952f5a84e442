"""`texocr predict`: transcribe images to LaTeX, one line per image.

    texocr predict --model runs/tiny/model eq1.png eq2.jpg          # path<TAB>latex
    texocr predict --model M scans/ --json                          # {"path", "text", "score", "time_s", "batch_time_s", ...}
    texocr predict --model M scans/ --tex-dir out/tex --render-dir out/png
    ls *.png | texocr predict --model M -                           # stdin: image paths, one per line...
    texocr predict --model M - < eq.png                             # ...or one image's bytes
    texocr predict --model M eq.png --stream                        # tokens as they are generated

An image that cannot be read fails alone (its error goes to stderr, or into its JSON line) and the others are
still printed; the exit code is 0 when every image was transcribed and 2 when any failed (a script must not
take a partial result for a whole one).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texocr.data.images import GLYPH_HEIGHT_HELP
from texocr.errors import TexocrError
from texocr.prep import BATCH_HELP, WORKERS_HELP, add_reread_flags

if TYPE_CHECKING:
    from texocr.infer import Prediction

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"P4", b"P5", b"P6")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="FILES|DIR|-",
                   help="image files, folders of images, or - (stdin: image paths one per line, or one image)")
    p.add_argument("--model", default="default", help="default, a local model directory or a hub id")
    p.add_argument("--adapter", help="a LoRA adapter directory to load on top of --model")
    p.add_argument("--json", action="store_true", help="one JSON object per line (text, score, time, error)")
    p.add_argument("--tex-dir", help="also write each prediction to DIR/<name>.tex")
    p.add_argument("--render-dir", help="also render each prediction to DIR/<name>.png")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    from texocr.config import EvalConfig

    default = EvalConfig()
    saved = "default: what the model's run saved, else %s"
    p.add_argument("--batch-size", type=int, help=BATCH_HELP)
    p.add_argument("--num-beams", type=int, help=saved % default.num_beams)
    p.add_argument("--max-new-tokens", type=int, help=saved % default.max_new_tokens)
    p.add_argument("--glyph-height", type=float, metavar="PX", help=GLYPH_HEIGHT_HELP)
    add_reread_flags(p)
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--workers", type=int, help=WORKERS_HELP)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")


def _is_image_bytes(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def expand_inputs(inputs: list[str], stdin: Any = None) -> list[tuple[str, Any]]:
    """`(name, source)` per image: files as given, folders' images (sorted, recursive), stdin's paths or bytes."""
    out: list[tuple[str, Any]] = []
    for item in inputs:
        if item == "-":
            data = (stdin if stdin is not None else sys.stdin.buffer).read()
            if _is_image_bytes(data):
                out.append(("-", data))
            else:
                lines = data.decode("utf-8", errors="replace").splitlines()
                out += [(line.strip(), line.strip()) for line in lines if line.strip()]
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                print(f"texocr predict: {item}: no image files in this folder", file=sys.stderr)
            out += [(str(f), f) for f in files]
        else:
            out.append((item, path))  # a missing file is reported as that image's error
    if not out:
        raise TexocrError("no images to transcribe")
    return out


def _unique_stem(name: str, used: set[str]) -> str:
    stem = Path(name).stem if name != "-" else "stdin"
    candidate, k = stem, 2
    while candidate in used:
        candidate, k = f"{stem}-{k}", k + 1
    used.add(candidate)
    return candidate


class _Writers:
    """The optional .tex and .png outputs."""

    def __init__(self, tex_dir: str | None, render_dir: str | None) -> None:
        self.tex_dir = Path(tex_dir) if tex_dir else None
        self.render_dir = Path(render_dir) if render_dir else None
        self.used: set[str] = set()
        self.renderer = None
        for d in (self.tex_dir, self.render_dir):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
        if self.render_dir is not None:
            from texocr.data.render import get_renderer

            self.renderer = get_renderer("auto")

    def write(self, names: list[str], texts: list[str | None]) -> None:
        stems = [_unique_stem(n, self.used) for n in names]
        if self.tex_dir is not None:
            for stem, text in zip(stems, texts):
                if text is not None:
                    (self.tex_dir / f"{stem}.tex").write_text(text + "\n", encoding="utf-8")
        if self.renderer is not None:
            ok = [(s, t) for s, t in zip(stems, texts) if t]
            for (stem, text), img in zip(ok, self.renderer.render_batch([t for _, t in ok])):
                if img is None:
                    print(f"texocr predict: {stem}: the prediction does not render: {text}", file=sys.stderr)
                else:
                    img.save(self.render_dir / f"{stem}.png")


def _one_line(text: str) -> str:
    """Newlines are spaces in LaTeX math; plain output keeps one line per image (JSON keeps the text as is)."""
    return text.replace("\r", " ").replace("\n", " ")


def json_record(name: str, pred: Prediction) -> dict[str, Any]:
    """The `--json` line of one image. Images are generated in batches, so what one image cost is a share:
    `time_s` is its batch's wall time divided by the batch's size; `batch_time_s` and `batch_size` give both
    (`batch_time_s` is what a caller waited for this image)."""
    rec = {"path": name, **{k: v for k, v in pred.to_dict().items() if k not in ("source", "time_s", "batch_size")}}
    rec["time_s"] = round(pred.time_s / max(1, pred.batch_size), 6)
    rec["batch_time_s"] = round(pred.time_s, 6)
    rec["batch_size"] = pred.batch_size
    return rec


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def main(args: argparse.Namespace) -> int:
    if args.stream and args.json:
        raise TexocrError("--stream prints text as it comes; it cannot be combined with --json")
    items = expand_inputs(args.inputs)
    writers = _Writers(args.tex_dir, args.render_dir)
    from texocr.cpu import use_idle_cores
    from texocr.infer import Recognizer
    from texocr.prep import default_workers

    rec = Recognizer.load(args.model, args.adapter, device=args.device, dtype=args.dtype,
                          batch_size=args.batch_size, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                          glyph_height=args.glyph_height, reread=args.reread, reread_below=args.reread_below)
    use_idle_cores(rec.device)
    rec.workers = args.workers if args.workers is not None else default_workers(rec.device)
    try:
        return _transcribe(rec, items, args, writers)
    finally:
        rec.close()


def _transcribe(rec: Any, items: list[tuple[str, Any]], args: argparse.Namespace, writers: _Writers) -> int:
    ok = 0
    if args.stream:
        for name, src in items:
            try:
                pieces = rec.stream(src)
                first = next(pieces, "")  # load errors surface here, before anything is printed
                print(f"{name}\t{_one_line(first)}", end="", flush=True)
                text = first
                for piece in pieces:
                    print(_one_line(piece), end="", flush=True)
                    text += piece
                print(flush=True)
                writers.write([name], [text.strip()])
                ok += 1
            except TexocrError as e:
                print(f"texocr predict: {e}", file=sys.stderr)
        return _exit_code(ok, len(items))
    # chunks bound memory on large folders; each chunk is batched by shape inside the recognizer
    for chunk in _chunks(items, max(1, rec.batch_size) * 4):
        preds = rec.predict([src for _, src in chunk])
        for (name, _), p in zip(chunk, preds):
            ok += p.error is None
            if args.json:
                print(json.dumps(json_record(name, p), ensure_ascii=False), flush=True)
            elif p.error is None:
                print(f"{name}\t{_one_line(p.text)}", flush=True)
            else:
                print(f"texocr predict: {p.error}", file=sys.stderr)
        writers.write([n for n, _ in chunk], [p.text if p.error is None else None for p in preds])
    return _exit_code(ok, len(items))


def _exit_code(ok: int, total: int) -> int:
    """0 when all `total` images were transcribed, else 2 (after a summary line on stderr)."""
    if ok < total:
        print(f"texocr predict: {total - ok} of {total} images failed", file=sys.stderr)
        return 2
    return 0
