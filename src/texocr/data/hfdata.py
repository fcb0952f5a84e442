"""Hugging Face data sets as a texocr Source: by hub id, from a local `save_to_disk` copy, or by preset name.

    open_source("hf:unsloth/LaTeX_OCR", split="test")          # datasets.load_dataset (needs the hub)
    open_source("hf:/data/latex_ocr_saved", split="test")      # datasets.load_from_disk (offline)
    open_source("linxy/LaTeX_OCR#human_handwrite", split="val")  # a preset: known columns, subset, split names

Columns come from the preset, `DataConfig.image_column/text_column`, or are detected among common names.
Images are read undecoded (`Image(decode=False)`) and decoded one row at a time by `load_image`, so one
corrupt image skips its row instead of breaking the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from texocr.data.rows import (
    IMAGE_KEYS,
    TEXT_KEYS,
    Row,
    Skipped,
    Source,
    canonical_split,
)
from texocr.errors import TexocrError


@dataclass(frozen=True)
class Preset:
    hub_id: str
    image_column: str
    text_column: str
    subset: str | None
    splits: tuple[str, ...]
    """The data set's own split names, in train/val/test order (matched through `canonical_split`)."""


PRESETS: dict[str, Preset] = {
    "unsloth/LaTeX_OCR": Preset("unsloth/LaTeX_OCR", "image", "text", None, ("train", "test")),
    "linxy/LaTeX_OCR": Preset("linxy/LaTeX_OCR", "image", "text", "full", ("train", "validation", "test")),
    "deepcopy/MathWriting-human": Preset("deepcopy/MathWriting-human", "image", "latex", None, ("train", "val", "test")),
}


def _preset(spec: str) -> Preset | None:
    name = spec.removeprefix("hf:").split("#", 1)[0].lower()
    return next((p for key, p in PRESETS.items() if key.lower() == name), None)


def is_preset(spec: str) -> bool:
    return _preset(spec) is not None


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _pick_split(available: list[str], split: str, where: str) -> str:
    if split in available:
        return split
    match = [s for s in available if canonical_split(s) == canonical_split(split)]
    if not match:
        raise TexocrError(f"{where}: no split {split!r}; available: {', '.join(available)}")
    return match[0]


def _pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
    if wanted:
        if columns and wanted not in columns:  # a streamed hub data set may not list its columns up front
            raise TexocrError(f"{where}: no {what} column {wanted!r}; columns: {', '.join(columns)}")
        return wanted
    lower = {c.lower(): c for c in columns}
    found = next((lower[c] for c in candidates if c in lower), None)
    if found is None:
        raise TexocrError(f"{where}: cannot tell which column holds the {what} among {', '.join(columns)}; "
                          f"set --data.{what}_column")
    return found


def open_hf(spec: str, cfg: Any, split: str | None, loaders: Any) -> Source:
    """Load the data set (local or hub), choose split and columns, return a `HFSource`."""
    import datasets

    body, _, subset = spec.removeprefix("hf:").partition("#")
    preset = _preset(spec)
    subset = subset or cfg.subset or (preset.subset if preset else None)
    split = split or cfg.split or "train"
    local = Path(body).expanduser()
    if local.is_dir():
        if not is_saved_dataset(local):
            raise TexocrError(f"{body}: not a save_to_disk folder (no dataset_dict.json or state.json)")
        try:
            ds = datasets.load_from_disk(str(local))
        except Exception as e:  # noqa: BLE001 - datasets raises many types for damaged folders
            raise TexocrError(f"{body}: cannot load the saved data set: {_one_line(e)}") from None
        if isinstance(ds, datasets.DatasetDict):
            split = _pick_split(list(ds), split, body)
            ds = ds[split]
        if cfg.streaming:
            ds = ds.to_iterable_dataset()
        name = body
    else:
        hub_id = preset.hub_id if preset else body
        if preset:
            split = _pick_split(list(preset.splits), split, hub_id)
        try:
            ds = datasets.load_dataset(hub_id, subset, split=split, streaming=cfg.streaming)
        except Exception as e:  # noqa: BLE001 - offline, unknown id, unknown split: all reported the same way
            raise TexocrError(
                f"cannot load Hugging Face data set {hub_id!r}{f' ({subset})' if subset else ''} split {split!r}: "
                f"{_one_line(e)}. Without network access, save it with save_to_disk elsewhere and pass "
                f"hf:/path/to/folder") from None
        name = f"{hub_id}#{subset}" if subset else hub_id
    columns = list(ds.column_names or [])
    where = f"{name} [{split}]"
    image_col = _pick_column(columns, cfg.image_column or (preset.image_column if preset else None),
                             IMAGE_KEYS, "image", where)
    text_col = _pick_column(columns, cfg.text_column or (preset.text_column if preset else None),
                            TEXT_KEYS, "text", where)
    if isinstance((ds.features or {}).get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))  # decode per row, so bad bytes skip one row
    base = local if local.is_dir() else None
    return HFSource(f"{name}:{split}", ds, image_col, text_col, loaders, base, split)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]


class HFSource(Source):
    """Rows of a `datasets.Dataset` (sized) or `IterableDataset` (streaming, length unknown)."""

    def __init__(self, name: str, ds: Any, image_col: str, text_col: str, loaders: Any, base: Path | None,
                 split: str) -> None:
        import datasets

        super().__init__(name, len(ds) if isinstance(ds, datasets.Dataset) else None)
        self.ds, self.image_col, self.text_col = ds, image_col, text_col
        self.loaders, self.base, self.split = loaders, base, split

    def _image(self, value: Any):  # -> Callable[[], PIL.Image] | None
        from functools import partial

        from texocr.data.images import load_image

        kw = {"max_pixels": self.loaders.max_pixels, "max_side": self.loaders.max_side}
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return partial(load_image, value["bytes"], **kw)
            value = value.get("path")
        if isinstance(value, str) and value:
            path = Path(value)
            if not path.is_absolute() and self.base is not None:
                path = self.base / path
            return partial(load_image, path, **kw)
        if value is not None and hasattr(value, "mode"):  # an already decoded PIL image
            return partial(load_image, value, **kw)
        return None

    def _rows(self) -> Iterator[Row | Skipped]:
        for i, rec in enumerate(self.ds):
            yield Row(f"{self.name}:{i}", rec.get(self.text_col), self._image(rec.get(self.image_col)),
                      {"split": self.split, "index": i})

    def labels(self) -> Iterator[tuple[str, str]]:
        """Labels only: reads just the text column, so no image bytes are touched."""
        full = self.ds
        self.ds = full.select_columns([self.text_col])
        try:
            yield from super().labels()
        finally:
            self.ds = full
