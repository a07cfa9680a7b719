"""PNG grid of images with column titles (PIL): eval's grid.png.

    write_grid(path, rows, column_titles=["teacher@50", "teacher@4", "student@4"], row_titles=prompts)

rows[r][c] is a uint8 image [H, W, 3]; every image has the same size. Images are enlarged by an
integer `scale` (nearest neighbour, so pixels stay visible) and laid out with a small gap; titles
are drawn with PIL's default font above each column and, optionally, left of each row.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 4
FONT_SIZE = 12
TITLE_HEIGHT = FONT_SIZE + 4


def title_font() -> ImageFont.ImageFont:
    """PIL's bundled scalable font (Pillow >= 10.1), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:
        return ImageFont.load_default()


def grid_image(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    scale: int = 4,
) -> Image.Image:
    """The grid as a PIL RGB image; cell (r, c) starts at `cell_origin(r, c, ...)`."""
    height, width = rows[0][0].shape[:2]
    cell_h, cell_w = height * scale, width * scale
    left = label_width(row_titles)
    n_rows, n_cols = len(rows), len(column_titles)
    canvas = Image.new(
        "RGB",
        (left + n_cols * (cell_w + GAP) + GAP, TITLE_HEIGHT + n_rows * (cell_h + GAP) + GAP),
        "white",
    )
    draw, font = ImageDraw.Draw(canvas), title_font()
    for c, title in enumerate(column_titles):
        draw.text((left + GAP + c * (cell_w + GAP), 1), title, fill="black", font=font)
    for r, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f"grid row {r} has {len(row)} images for {n_cols} column titles")
        if row_titles is not None:
            draw.text((GAP, TITLE_HEIGHT + GAP + r * (cell_h + GAP)), row_titles[r], fill="black", font=font)
        for c, image in enumerate(row):
            cell = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(cell, cell_origin(r, c, cell_h, cell_w, left))
    return canvas


def cell_origin(row: int, column: int, cell_h: int, cell_w: int, left: int) -> tuple[int, int]:
    """(x, y) of the top-left pixel of cell (row, column)."""
    return left + GAP + column * (cell_w + GAP), TITLE_HEIGHT + GAP + row * (cell_h + GAP)


def label_width(row_titles: Sequence[str] | None) -> int:
    """Pixels left of the first column: the widest row title plus a gap (0 without titles)."""
    font = title_font()
    return 0 if not row_titles else 2 * GAP + max(round(font.getlength(t)) for t in row_titles)


def write_grid(
    path: str | Path,
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] | None = None,
    scale: int = 4,
) -> Path:
    """Write the grid as a PNG and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(rows, column_titles, row_titles, scale).save(path, format="PNG")
    return path
