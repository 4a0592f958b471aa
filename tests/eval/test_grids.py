import torch
from PIL import Image

from fastunlearn.eval.grids import save_before_after_grid, save_class_grid


def test_class_grid_png(tmp_path):
    imgs = {c: torch.rand(6, 1, 16, 16) * 2 - 1 for c in range(10)}
    path = save_class_grid(imgs, tmp_path / "sub" / "grid.png", title="digits", scale=4, max_per_row=5)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        w, h = im.size
    assert h >= 10 * 64 and w >= 5 * 64  # 10 rows, 5 upscaled 64-px tiles per row


def test_before_after_grid(tmp_path):
    before = {0: torch.zeros(3, 3, 8, 8), 1: torch.ones(3, 3, 8, 8)}
    after = {0: -torch.ones(3, 3, 8, 8), 1: torch.zeros(3, 3, 8, 8)}
    path = save_before_after_grid(before, after, tmp_path / "ba.png")
    with Image.open(path) as im:
        assert im.size[1] >= 4 * 32
