"""grid.png: one cell per image, enlarged without blurring, titles above the columns."""

import numpy as np
from PIL import Image

from student_train.eval.grid import cell_origin, label_width, write_grid


def test_grid_places_each_image_in_its_cell(tmp_path):
    colours = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(10, 20, 30), (200, 100, 50), (0, 0, 0)]]
    rows = [[np.full((8, 8, 3), colour, dtype=np.uint8) for colour in row] for row in colours]
    titles = ["teacher@50", "teacher@4", "student@4"]
    path = write_grid(tmp_path / "out" / "grid.png", rows, titles, row_titles=["a", "bb"], scale=3)

    grid = np.asarray(Image.open(path).convert("RGB"))
    left = label_width(["a", "bb"])
    for r, row in enumerate(colours):
        for c, colour in enumerate(row):
            x, y = cell_origin(r, c, 24, 24, left)
            assert (grid[y : y + 24, x : x + 24] == colour).all(), (r, c)
    assert grid.shape[1] > 3 * 24 + left and grid.shape[0] > 2 * 24
