"""What every data source is made of: a `Row` (a label and a way to load its image), the `Source` base class
that checks rows and records the skipped ones, and the skip summary.

A module of its own so that the concrete sources (`sources.py` for local folders, `hfdata.py`, `inkml.py`) all
import it and none imports another's home: no import circle.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from texocr.errors import TexocrError
from texocr.sample import DeferredImage, Sample, Skipped

log = logging.getLogger("texocr.data")

IMAGE_KEYS = ("image", "img", "image_path", "file_name", "filename", "path", "png")
TEXT_KEYS = ("latex", "text", "formula", "label", "latex_formula", "ground_truth", "tex", "equation")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test", "testing": "test"}


def canonical_split(name: str) -> str:
    """`validation`/`valid`/`dev` -> `val`, `training` -> `train`, ...; other names unchanged (lower-cased)."""
    return _SPLIT_ALIASES.get(name.strip().lower(), name.strip().lower())


@dataclass
class Row:
    """A source's raw row before checking: the label as found and a way to load its image."""

    id: str
    label: Any
    image: Callable[[], Any] | None
    """Loads the image (raises a TexocrError with `.reason`); None when the row has no image."""
    meta: dict[str, Any] = field(default_factory=dict)
    missing: str = "row has no image"


def check_label(label: Any) -> tuple[str, str] | str:
    """The label if usable, else `(reason, detail)`: `missing_label`, `bad_label` (not a string), `empty_label`."""
    if label is None:
        return ("missing_label", "no label")
    if not isinstance(label, str):
        return ("bad_label", f"label is a {type(label).__name__}, not a string: {str(label)[:60]!r}")
    if not label.strip():
        return ("empty_label", "label is empty or whitespace")
    return label


class Source:
    """An iterable of Samples that records the rows it skipped. Subclasses implement `_rows()`."""

    def __init__(self, name: str, num_rows: int | None = None) -> None:
        self.name = name
        self.num_rows = num_rows
        self.skipped: list[Skipped] = []

    def _rows(self) -> Iterator[Row | Skipped]:
        raise NotImplementedError

    def __len__(self) -> int:
        """Rows in the source (before skipping bad ones); TypeError when unknown (streaming)."""
        if self.num_rows is None:
            raise TypeError(f"the length of {self.name} is not known before reading it")
        return self.num_rows

    def __iter__(self) -> Iterator[Sample]:
        yield from self._checked(with_images=True)  # type: ignore[misc]

    def labels(self) -> Iterator[tuple[str, str]]:
        """`(id, latex)` of every row with a usable label, without loading any image."""
        yield from self._checked(with_images=False)  # type: ignore[misc]

    def deferred(self) -> Iterator[Sample]:
        """Like iterating, but each image whose loader can cross to another process (a `functools.partial`: a
        file, bytes, strokes) comes as an unread `DeferredImage`; the others are read here. For a caller that
        reads images in worker processes (`texocr eval` on a GPU): this process then decodes nothing, and an
        unreadable image surfaces when it is read, not in `.skipped`."""
        yield from self._checked(with_images=True, defer=True)  # type: ignore[misc]

    def shard(self, k: int, n: int) -> Iterator[Sample]:
        """The Samples of rows at positions `i` with `i % n == k` (one reader of `n`): only their images are
        loaded, and only their bad rows are recorded in `.skipped`."""
        if not 0 <= k < n:
            raise ValueError(f"shard {k} of {n}")
        yield from self._checked(with_images=True, shard=(k, n))  # type: ignore[misc]

    def _checked(self, with_images: bool, shard: tuple[int, int] = (0, 1),
                 defer: bool = False) -> Iterator[Sample | tuple[str, str]]:
        self.skipped = []  # a new pass (a new epoch) counts afresh
        n = 0
        for row in self._rows():
            n += 1
            if (n - 1) % shard[1] != shard[0]:
                continue
            if isinstance(row, Skipped):
                self.skipped.append(row)
                continue
            latex = check_label(row.label)
            if isinstance(latex, tuple):
                self.skipped.append(Skipped(row.id, *latex))
                continue
            if not with_images:
                yield row.id, latex
                continue
            if row.image is None:
                self.skipped.append(Skipped(row.id, "missing_image", row.missing))
                continue
            if defer and isinstance(row.image, partial):
                yield Sample(image=DeferredImage(row.image), latex=latex, id=row.id,  # type: ignore[arg-type]
                             meta={"source": self.name, **row.meta})
                continue
            try:
                image = row.image()
            except TexocrError as e:
                self.skipped.append(Skipped(row.id, getattr(e, "reason", "bad_image"), str(e)))
                continue
            yield Sample(image=image, latex=latex, id=row.id, meta={"source": self.name, **row.meta})
        if self.skipped:
            log.warning("%s", format_skipped(self.name, self.skipped, n))


# ---------------------------------------------------------------- skipped rows


def skip_counts(skipped: Iterable[Skipped]) -> dict[str, int]:
    """Counts per reason, most frequent first."""
    return dict(Counter(s.reason for s in skipped).most_common())


def format_skipped(name: str, skipped: list[Skipped], total: int | None = None) -> str:
    """`data/x: skipped 3 of 100 rows (missing_image 2, empty_label 1)`."""
    counts = ", ".join(f"{reason} {n}" for reason, n in skip_counts(skipped).items())
    of = f" of {total}" if total is not None else ""
    return f"{name}: skipped {len(skipped)}{of} rows ({counts})" if skipped else f"{name}: nothing skipped"


def write_skipped(skipped: Iterable[Skipped], path: str | Path) -> Path:
    """Write one `{"id", "reason", "detail"}` JSON object per line; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in skipped:
            f.write(json.dumps({"id": s.id, "reason": s.reason, "detail": s.detail}, ensure_ascii=False) + "\n")
    return path
