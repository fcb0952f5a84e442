"""A preview sheet of many formula images: rows packed left to right, every image at a common height.

    from texocr.data.montage import montage
    montage(images, width=1600).save("montage.png")
"""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image


def montage(images: Iterable[Image.Image], *, width: int = 1600, row_height: int = 72, gap: int = 6,
            max_rows: int = 40, background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """Pack `images` into rows of at most `width` px; each image is scaled to at most `row_height` px high
    (and never wider than the sheet). Grey gaps show where one image ends."""
    rows: list[list[Image.Image]] = [[]]
    x = gap
    for img in images:
        img = img.convert("RGB")
        scale = min(1.0, row_height / img.height, (width - 2 * gap) / img.width)
        if scale < 1.0:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        if rows[-1] and x + img.width + gap > width:
            if len(rows) == max_rows:
                break
            rows.append([])
            x = gap
        rows[-1].append(img)
        x += img.width + gap
    heights = [max((i.height for i in row), default=0) for row in rows]
    sheet = Image.new("RGB", (width, max(1, sum(heights) + gap * (len(rows) + 1))), background)
    y = gap
    for row, h in zip(rows, heights):
        x = gap
        for img in row:
            sheet.paste(img, (x, y + (h - img.height) // 2))
            x += img.width + gap
        y += h + gap
    return sheet
