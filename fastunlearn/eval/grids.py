"""Labelled image grids for reports: one row per class, the label at the start of the row; for text-to-image
models one row per prompt, the prompt's text above its before | after images.

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


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text`` cut to ``width`` pixels with a trailing ellipsis (a prompt may be a dozen words)."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def save_before_after_prompt_grid(
    before_by_prompt: Mapping[str, torch.Tensor],
    after_by_prompt: Mapping[str, torch.Tensor],
    path: str | Path,
    title: str | None = None,
    scale: int = 4,
    max_per_row: int = 8,
    gap: int = 4,
) -> Path:
    """Save a PNG comparing two text-to-image models prompt by prompt: per prompt, its text on a line, then
    one row with the "before" images on the left and the "after" images on the right (columns headed
    ``before`` / ``after``). Prompts too long for the row are cut with an ellipsis.

    Meant for unlearning reports: each prompt drawn from the same seeded noise before and after, so each
    "after" image is the same draw as the "before" image in the same column of its half.

    Args:
        before_by_prompt / after_by_prompt: ``{prompt: Tensor[N, 1|3, H, W] in [-1, 1]}``; rows in the order
            of ``before_by_prompt``; every prompt must be in both.
    """
    keys = list(before_by_prompt)
    if not keys:
        raise ValueError("save_before_after_prompt_grid needs at least one prompt of images")
    missing = [k for k in keys if k not in after_by_prompt]
    if missing:
        raise ValueError(f"after_by_prompt lacks the prompts {missing} that before_by_prompt has")
    rows = [(str(k), _to_uint8(before_by_prompt[k][:max_per_row]), _to_uint8(after_by_prompt[k][:max_per_row]))
            for k in keys]
    h, w = next((b.shape[1:3] for _, b, _ in rows if b.shape[0] > 0), (16, 16))
    cell_h, cell_w = h * scale, w * scale
    n_cols = max(max(b.shape[0], a.shape[0]) for _, b, a in rows)
    half = max(n_cols, 1) * (cell_w + gap)
    middle = 4 * gap  # the space between the two halves
    width = gap + half + middle + half
    font = _font(max(12, min(cell_h // 3, 18)))
    line_h = int(font.getbbox("Ag")[3]) + gap
    title_h = (line_h + gap) if title else 0
    head_h = line_h + gap
    height = title_h + head_h + len(rows) * (line_h + cell_h + 2 * gap) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), _fit_text(draw, title, font, width - 2 * gap), fill=TEXT, font=font)
    y = title_h + gap
    sep = gap + half + middle // 2 - gap // 2  # a thin rule between the halves
    draw.line([(sep, y), (sep, height - gap)], fill=(190, 190, 190), width=1)
    draw.text((gap, y), "before", fill=TEXT, font=font)
    draw.text((gap + half + middle, y), "after", fill=TEXT, font=font)
    y += head_h
    for prompt, before, after in rows:
        draw.text((gap, y), _fit_text(draw, prompt, font, width - 2 * gap), fill=TEXT, font=font)
        y += line_h
        for x0, arr in ((gap, before), (gap + half + middle, after)):
            for c in range(arr.shape[0]):
                tile = Image.fromarray(arr[c]).resize((cell_w, cell_h), Image.NEAREST)
                canvas.paste(tile, (x0 + c * (cell_w + gap), y))
        y += cell_h + 2 * gap
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


__all__ = ["save_class_grid", "save_before_after_grid", "save_before_after_prompt_grid"]
