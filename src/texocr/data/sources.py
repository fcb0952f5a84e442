"""Every data source as one stream of `Sample(image, latex, id, meta)`, chosen by a spec string.

    src = open_source("data/synth")                        # folder: labels.jsonl, a CSV, or im2latex .lst files
    src = open_source("../shared/data/mathwriting-excerpt")  # rows may point at InkML (`inkml` field) instead
    src = open_source("inks/", split="test")               # a folder of InkML files (CROHME, MathWriting)
    src = open_source("hf:/path/to/save_to_disk", split="test")  # or hf:<hub id>, or a preset:
    src = open_source("linxy/LaTeX_OCR#human_handwrite", cfg, split="val")
    src = open_source("synthetic", cfg)                    # rendered on the fly (texocr.data.synth)
    for sample in src: ...
    write_skipped(src.skipped, "runs/x/skipped.jsonl")     # every row that was not usable, with its reason

Labels are kept as the source gives them (training normalizes later). A bad row (missing or corrupt
image, malformed JSON line, missing/empty/non-string label, an image path leading out of the data set's folder:
`outside_dataset`, never opened...) is skipped and recorded in `.skipped`, never raised, and a one-line summary with counts per reason is logged when the source has been read to the end.
`split`: a Hugging Face split, a folder's `<split>/` subfolder, or the rows whose `split` field matches;
left None, a folder gives every row and a Hugging Face data set gives `cfg.split`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from texocr.data.rows import (  # noqa: F401 -- re-exported: the public names of the data sources
    _SPLIT_ALIASES,
    IMAGE_KEYS,
    TEXT_KEYS,
    Row,
    Source,
    canonical_split,
    check_label,
    format_skipped,
    skip_counts,
    write_skipped,
)
from texocr.errors import TexocrError
from texocr.sample import Sample, Skipped  # noqa: F401

# ---------------------------------------------------------------- local folders

OUTSIDE = "outside_dataset"
"""Skip reason of a row whose image path leads out of the data set's folder (never opened)."""


def inside(root: Path, ref: str) -> Path | str:
    """`root / ref` if that stays inside `root` once `..` and symlinks are followed, else why not (a sentence).

    Only names are resolved (`os.path.realpath`: lstat and readlink), nothing is opened: a data set must not make
    texocr read files outside its folder (`../../etc/passwd`, an absolute path, a symlink to elsewhere).
    """
    if Path(ref).is_absolute() or Path(ref).drive:
        return f"{ref!r} is an absolute path; image paths are relative to the data set's folder"
    base = os.path.realpath(root)
    real = os.path.realpath(root / ref)
    if os.path.commonpath([base, real]) != base:
        how = "goes up out of" if ".." in Path(ref).parts else "is a symlink out of"
        return f"{ref!r} {how} the data set's folder {base} (to {real}); not read"
    return root / ref


@dataclass
class _Loaders:
    """How a row's image reference becomes a PIL image, with the config's limits."""

    max_pixels: int
    max_side: int
    ink_height: int
    ink_pen_width: float

    def image(self, path: Path) -> Callable[[], Any]:
        from texocr.data.images import load_image

        return partial(load_image, path, max_pixels=self.max_pixels, max_side=self.max_side)

    def ink(self, path: Path) -> Callable[[], Any]:
        return partial(_ink_image, path, height=self.ink_height, pen_width=self.ink_pen_width)


def _ink_image(path: Path, *, height: int, pen_width: float) -> Any:  # -> PIL.Image
    """An InkML file's strokes rasterized (a module-level function: its partial pickles, `Source.deferred`)."""
    from texocr.data.inkml import rasterize, read_inkml

    return rasterize(read_inkml(path).strokes, height=height, pen_width=pen_width)


class RecordSource(Source):
    """Rows read from labels.jsonl or a CSV: an image (or `inkml`) path relative to `root`, and a label."""

    def __init__(self, name: str, root: Path, records: list[tuple[str, dict[str, Any] | Skipped]],
                 loaders: _Loaders, image_key: str | None, text_key: str | None) -> None:
        super().__init__(name, len(records))
        self.root, self.records, self.loaders = root, records, loaders
        self.image_key, self.text_key = image_key, text_key

    def _rows(self) -> Iterator[Row | Skipped]:
        for where, rec in self.records:
            if isinstance(rec, Skipped):
                yield rec
                continue
            text_key = self.text_key or next((k for k in TEXT_KEYS if k in rec), None)
            image_key = self.image_key or next((k for k in IMAGE_KEYS if rec.get(k)), None)
            rid = str(rec["id"]) if rec.get("id") not in (None, "") else str(rec.get(image_key) or where)
            meta = {k: v for k, v in rec.items() if k not in (text_key, image_key, "id") and v is not None}
            meta["row"] = where
            ref, image, missing = rec.get(image_key) if image_key else None, None, "row has no image"
            ink = rec.get("inkml")
            target = ref if isinstance(ref, str) and ref.strip() else ink if isinstance(ink, str) and ink.strip() \
                else None
            path = inside(self.root, target) if target is not None else None
            if isinstance(path, str):
                yield Skipped(rid, OUTSIDE, path)
                continue
            if path is not None:
                image = self.loaders.image(path) if target is ref else self.loaders.ink(path)
            elif ref is not None:
                missing = f"image field is a {type(ref).__name__}, not a path"
            yield Row(rid, rec.get(text_key) if text_key else None, image, meta, missing)


def _read_jsonl(path: Path, split: str | None) -> list[tuple[str, dict[str, Any] | Skipped]]:
    out: list[tuple[str, dict[str, Any] | Skipped]] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path.name}:{lineno}"
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                out.append((where, Skipped(where, "bad_json", f"not valid JSON: {e.msg} at column {e.colno}")))
                continue
            if not isinstance(rec, dict):
                out.append((where, Skipped(where, "bad_row", f"expected a JSON object, got {type(rec).__name__}")))
            elif _in_split(rec, split):
                out.append((where, rec))
    return out


def _read_csv(path: Path, split: str | None) -> list[tuple[str, dict[str, Any] | Skipped]]:
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        text = f.read()
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(keepends=True), delimiter=delimiter)
    out: list[tuple[str, dict[str, Any] | Skipped]] = []
    for rec in reader:
        where = f"{path.name}:{reader.line_num}"
        if None in rec or any(v is None for v in rec.values()):  # more or fewer fields than the header
            out.append((where, Skipped(where, "bad_row", f"{len([v for v in rec.values() if v is not None])} "
                                                         f"fields where the header has {len(reader.fieldnames or [])}")))
        elif _in_split(rec, split):
            out.append((where, dict(rec)))
    return out


def _in_split(rec: dict[str, Any], split: str | None) -> bool:
    value = rec.get("split")
    return split is None or not isinstance(value, str) or canonical_split(value) == canonical_split(split)


class Im2latexSource(Source):
    """im2latex-100k `.lst` layout: a formulas file (one per line) and split files of image/formula-index lines.

    Both published layouts are read: im2markup's filtered `image_name.png formula_idx` and the original
    Zenodo `formula_idx image_name render_type` (image name without `.png`). Formulas are split on `\\n`
    only: some im2latex formulas contain a bare `\\r`, which universal newlines would break apart.
    """

    def __init__(self, name: str, lst: Path, formulas: Path, images: Path, loaders: _Loaders) -> None:
        self.formulas = formulas.read_bytes().decode("utf-8", errors="replace").split("\n")
        self.lines = [ln for ln in lst.read_text(encoding="utf-8", errors="replace").split("\n") if ln.strip()]
        super().__init__(name, len(self.lines))
        self.lst, self.images, self.loaders = lst, images, loaders

    def _rows(self) -> Iterator[Row | Skipped]:
        for lineno, line in enumerate(self.lines, 1):
            parts = line.split()
            where = f"{self.lst.name}:{lineno}"
            if len(parts) >= 2 and parts[1].isdigit() and not parts[0].isdigit():
                image, idx = parts[0], int(parts[1])  # im2markup
            elif len(parts) >= 2 and parts[0].isdigit():
                idx, image = int(parts[0]), parts[1]  # original: formula_idx image_name render_type
                image = image if "." in image else image + ".png"
            else:
                yield Skipped(where, "bad_row", f"expected 'image formula_index', got {line[:60]!r}")
                continue
            label = self.formulas[idx] if idx < len(self.formulas) else None
            path = inside(self.images, image)
            if isinstance(path, str):
                yield Skipped(image, OUTSIDE, path)
                continue
            yield Row(image, label, self.loaders.image(path), {"row": where, "formula_index": idx}, missing="")


def _im2latex(name: str, folder: Path, lst: Path | None, split: str | None, loaders: _Loaders) -> Source | None:
    lsts = sorted(folder.glob("*.lst"))
    formulas = [p for p in lsts if "formula" in p.name.lower()]
    if not formulas:
        return None
    formula = next((p for p in formulas if ".norm." in p.name), formulas[0])
    if lst is None:
        want = canonical_split(split or "train")
        lists = [p for p in lsts if p not in formulas]
        match = [p for p in lists if canonical_split(_split_word(p.name)) == want]
        if not match:
            raise TexocrError(f"{folder}: no im2latex list for split {want!r} among "
                              f"{', '.join(p.name for p in lists) or 'no .lst files'}")
        lst = next((p for p in match if "filter" in p.name), match[0])
    images = next((folder / d for d in ("formula_images_processed", "images_processed", "formula_images", "images")
                   if (folder / d).is_dir()), folder)
    return Im2latexSource(name, lst, formula, images, loaders)


def _split_word(filename: str) -> str:
    """`im2latex_validate_filter.lst` -> `validate` -> canonical `val`."""
    for word in filename.lower().replace(".", "_").split("_"):
        if word in _SPLIT_ALIASES or word == "validate":
            return "val" if word == "validate" else word
    return ""


def _folder(spec: str, path: Path, split: str | None, loaders: _Loaders, cfg: Any) -> Source:
    image_key = getattr(cfg, "image_column", None)
    text_key = getattr(cfg, "text_column", None)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return RecordSource(spec, path.parent, _read_jsonl(path, split), loaders, image_key, text_key)
        if suffix in (".csv", ".tsv"):
            return RecordSource(spec, path.parent, _read_csv(path, split), loaders, image_key, text_key)
        if suffix == ".lst":
            src = _im2latex(spec, path.parent, path, split, loaders)
            if src is not None:
                return src
        if suffix == ".inkml":
            from texocr.data.inkml import InkmlSource

            return InkmlSource(spec, [path], loaders.ink_height, loaders.ink_pen_width)
        raise TexocrError(f"{spec}: cannot read a {suffix or 'extensionless'} file as a data set "
                          "(expected labels.jsonl, .csv, .lst or .inkml)")
    if split and (path / split).is_dir() and any((path / split).iterdir()):
        return _folder(spec, path / split, None, loaders, cfg)
    if (path / "labels.jsonl").is_file():
        return RecordSource(spec, path, _read_jsonl(path / "labels.jsonl", split), loaders, image_key, text_key)
    csvs = sorted(path.glob("*.csv")) + sorted(path.glob("*.tsv"))
    if csvs:
        chosen = next((p for p in csvs if p.stem == "labels"), csvs[0])
        return RecordSource(spec, path, _read_csv(chosen, split), loaders, image_key, text_key)
    src = _im2latex(spec, path, None, split, loaders)
    if src is not None:
        return src
    if next(path.rglob("*.inkml"), None) is not None:
        from texocr.data.inkml import inkml_folder

        return inkml_folder(spec, path, split, loaders.ink_height, loaders.ink_pen_width)
    raise TexocrError(f"{spec}: no labels.jsonl, CSV, im2latex .lst or InkML files in this folder")


# ---------------------------------------------------------------- dispatch


def open_source(spec: str, cfg: Any = None, *, split: str | None = None) -> Source:
    """Open a data source by spec (see the module docstring); `cfg` is a `DataConfig` or None (defaults)."""
    from texocr.config import DataConfig

    cfg = cfg if cfg is not None else DataConfig()
    spec = spec.strip()
    if not spec:
        raise TexocrError("empty data source")
    if spec == "synthetic":
        return _synthetic(cfg, split)
    loaders = _Loaders(cfg.max_image_pixels, cfg.max_image_side, cfg.ink_height, cfg.ink_pen_width)
    from texocr.data import hfdata

    if spec.startswith("hf:") or hfdata.is_preset(spec):
        return hfdata.open_hf(spec, cfg, split, loaders)
    path = Path(spec).expanduser()
    if path.is_dir() and hfdata.is_saved_dataset(path):
        return hfdata.open_hf("hf:" + spec, cfg, split, loaders)
    if path.exists():
        try:
            return _folder(spec, path, split, loaders, cfg)
        except OSError as e:  # an unreadable labels file or folder
            raise TexocrError(f"{spec}: cannot read {e.filename or 'the data set'}: {e.strerror or e}") from None
    hint = " (a Hugging Face id needs the hf: prefix)" if spec.count("/") == 1 and not spec.startswith((".", "/")) else ""
    raise TexocrError(f"data source {spec!r} not found: no such file or folder{hint}; "
                      f"presets: {', '.join(hfdata.PRESETS)}; or 'synthetic'")


def _synthetic(cfg: Any, split: str | None) -> Any:
    try:
        from texocr.data.synth import SyntheticSource
    except ImportError as e:
        raise TexocrError(f"the synthetic data engine is not available: {e}") from None
    # validation/test get their own seed stream, so they never repeat the training formulas' indices
    offset = 0 if split is None or canonical_split(split) == "train" else 1_000_003
    return SyntheticSource(n=cfg.synthetic_n, seed=cfg.seed + offset, style=cfg.synthetic_style,
                           formulas=cfg.formulas, real_ratio=cfg.real_formula_ratio,
                           mutate_ratio=cfg.mutate_ratio, augment=cfg.augment, augment_strength=cfg.augment_strength,
                           printed_dpis=cfg.printed_dpis, downsample_share=cfg.downsample_share)
