"""Labelled image grids for reports: one row per class, the label at the start of the row.

Written with PIL only (no matplotlib figure machinery), nearest-neighbour upscaling so that
16×16 digits stay crisp and readable, and a fixed built-in font so the output does not
depend on the fonts installed on the machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [-1, 1] → ``[N, H, W, 3]`` uint8 (grey images repeated to RGB)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [N, 1|3, H, W], got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _render_rows(
    rows: Sequence[tuple[str, torch.Tensor]],
    title: str | None,
    scale: int,
    max_per_row: int,
    gap: int,
) -> Image.Image:
    tiles = [(label, _to_uint8(imgs[:max_per_row])) for label, imgs in rows]
    h, w = next((t.shape[1:3] for _, t in tiles if t.shape[0] > 0), (16, 16))
    cell_h, cell_w = h * scale, w * scale
    n_cols = max((t.shape[0] for _, t in tiles), default=0)
    font = _font(min(32, max(12, cell_h // 2)))  # capped: a 512-px SD tile would otherwise get 256-px labels
    # Measured with the font actually used, so long labels ("3 before") never touch the tiles.
    label_width = int(max(font.getlength(label) for label, _ in tiles)) + 3 * gap
    title_h = (cell_h // 2 + 2 * gap) if title else 0
    width = label_width + n_cols * (cell_w + gap) + gap
    height = title_h + len(tiles) * (cell_h + gap) + gap
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), title, fill=TEXT, font=_font(min(32, max(12, cell_h // 3))))
    for r, (label, arr) in enumerate(tiles):
        y = title_h + gap + r * (cell_h + gap)
        draw.text((gap, y + cell_h // 4), label, fill=TEXT, font=font)
        for c in range(arr.shape[0]):
            tile = Image.fromarray(arr[c]).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (cell_w + gap), y))
    return canvas


def save_class_grid(
    images_by_class: Mapping[int | str, torch.Tensor],
    path: str | Path,
    title: str | None = None,
    scale: int = 4,
    max_per_row: int = 10,
    gap: int = 4,
) -> Path:
    """Save a PNG with one row per class: the class label, then its images.

    Args:
        images_by_class: ``{class: Tensor[N, 1|3, H, W] in [-1, 1]}``, rows in key order
            as given (dicts keep insertion order).
        path: output file (``.png``); parent folders are created.
        title: optional heading above the grid.
        scale: integer pixel upscaling (nearest neighbour): 4 turns 16×16 into 64×64.
        max_per_row: at most this many images per row.
        gap: white pixels between tiles.

    Returns:
        The written path.
    """
    if not images_by_class:
        raise ValueError("save_class_grid needs at least one class of images")
    rows = [(str(k), v) for k, v in images_by_class.items()]
    img = _render_rows(rows, title, scale, max_per_row, gap)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_before_after_grid(
    before_by_class: Mapping[int | str, torch.Tensor],
    after_by_class: Mapping[int | str, torch.Tensor],
    path: str | Path,
    title: str | None = None,
    scale: int = 4,
    max_per_row: int = 8,
    gap: int = 4,
) -> Path:
    """Save a PNG comparing two models class by class: rows ``"<c> before"``, ``"<c> after"``.

    Meant for unlearning reports: draw both models from the same seeded noise so each
    "after" image sits under the "before" image it came from.
    """
    keys = list(before_by_class)
    missing = [k for k in keys if k not in after_by_class]
    if missing:
        raise ValueError(f"after_by_class lacks the classes {missing} that before_by_class has")
    rows: list[tuple[str, torch.Tensor]] = []
    for k in keys:
        rows.append((f"{k} before", before_by_class[k]))
        rows.append((f"{k} after", after_by_class[k]))
    if not rows:
        raise ValueError("save_before_after_grid needs at least one class of images")
    img = _render_rows(rows, title, scale, max_per_row, gap)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


__all__ = ["save_class_grid", "save_before_after_grid"]
