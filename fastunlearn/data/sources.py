"""User image sources → model-ready tensors ``[N, C, H, W]`` in [-1, 1].

A user brings forget images as a folder of files (any format PIL reads) or as an array
already in memory. Both end up as float32 tensors at the model's resolution and channel
count, so the selection and the methods never see the difference.

Conversions (documented here because they decide what the model is trained on):

- channels: 1 ↔ 3 by PIL's ``L``/``RGB`` conversion for files (luma ITU-R 601-2); for
  arrays, grey is repeated to 3 channels, RGB is reduced with the same luma weights, and an
  alpha channel (4th) is dropped. Any other channel count is an error.
- size: a non-square image is centre-cropped to a square, then resized (bilinear with
  antialiasing) to ``size × size``.
- values: files are 0–255. For arrays ``value_range`` says the range; when omitted it is
  inferred: integers → 0–255; floats within [0, 1] → [0, 1]; floats above 1 → 0–255;
  otherwise [-1, 1].
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from fastunlearn.data.errors import DataError

LUMA = (0.299, 0.587, 0.114)


def image_extensions() -> set[str]:
    """File extensions (lower case, with the dot) that the installed PIL can open."""
    return {ext.lower() for ext in Image.registered_extensions()}


def list_image_files(folder: str | PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted by relative path).

    Raises:
        DataError: the folder does not exist, is not a folder, or holds no image file.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder (expected a folder of image files)")
    exts = image_extensions()
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in exts]
    if not images:
        common = ", ".join(e for e in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".webp") if e in exts)
        others = f"; it has {len(files)} other file(s), e.g. {files[0].name!r}" if files else ""
        raise DataError(f"image folder {str(root)!r} holds no image file (looked for {common}, ...){others}")
    return images


def _to_square_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop ``[N, C, H, W]`` to a square, then resize to ``size × size``."""
    h, w = x.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    if x.shape[-1] != size:
        antialias = x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    return x


def _convert_channels(x: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    c = x.shape[1]
    if c == 4:
        x, c = x[:, :3], 3
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)
    raise DataError(
        f"{what} has {x.shape[1]} channel(s) but the model expects {channels}; "
        "only 1 (grey), 3 (RGB) or 4 (RGBA) channels can be converted"
    )


def load_image_file(path: str | PathLike, size: int, channels: int) -> torch.Tensor:
    """One image file → ``[C, size, size]`` in [-1, 1].

    Raises:
        DataError: the file cannot be read as an image.
    """
    if channels not in (1, 3):
        raise DataError(f"the model expects {channels} channels; image files convert only to 1 or 3")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image file {str(path)!r}: {exc}") from exc
    x = torch.from_numpy(arr.copy()).reshape(arr.shape[0], arr.shape[1], -1).permute(2, 0, 1)
    x = _to_square_size(x.unsqueeze(0) / 127.5 - 1.0, size)[0]
    return x.clamp_(-1.0, 1.0)


def load_image_folder(
    folder: str | PathLike, size: int, channels: int
) -> tuple[torch.Tensor, list[Path]]:
    """All images under ``folder`` → (``[N, C, size, size]`` in [-1, 1], their paths)."""
    paths = list_image_files(folder)
    return torch.stack([load_image_file(p, size, channels) for p in paths]), paths


def _infer_range(x: torch.Tensor, integer: bool) -> tuple[float, float]:
    if integer:
        return (0.0, 255.0)
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0.0 and hi <= 1.0:
        return (0.0, 1.0)
    if lo >= 0.0 and hi > 1.0:
        return (0.0, 255.0)
    return (-1.0, 1.0)


def _as_nchw(x: torch.Tensor, what: str) -> torch.Tensor:
    """Accept ``[H, W]``, ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]`` (C in 1, 3, 4 for the latter)."""
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        # Channels-last only when the last axis looks like channels and the second does not;
        # otherwise NCHW, and a bad channel count is reported by the channel conversion.
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return x.permute(0, 3, 1, 2)
        return x
    raise DataError(
        f"{what} has {x.ndim} dimension(s) (shape {tuple(x.shape)}): expected [H, W], [N, H, W], "
        "[N, C, H, W] or [N, H, W, C]"
    )


def load_images(
    source: str | PathLike | torch.Tensor | np.ndarray,
    size: int,
    channels: int,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Any supported image source → float32 ``[N, channels, size, size]`` in [-1, 1].

    Args:
        source: a folder (searched recursively), a single image file, a tensor or a numpy array.
        size: the model's image side.
        channels: the model's channel count.
        value_range: ``(low, high)`` of an array's values; inferred when omitted (see module doc).

    Raises:
        DataError: with what was expected and what was found (missing/empty folder,
            unreadable file, unconvertible channels or shape, empty array).
    """
    if isinstance(source, (str, PathLike)):
        path = Path(source)
        if path.is_file():
            return load_image_file(path, size, channels)[None]
        return load_image_folder(path, size, channels)[0]
    if isinstance(source, np.ndarray):
        what = f"the numpy array (dtype {source.dtype})"
        integer = np.issubdtype(source.dtype, np.integer) or source.dtype == np.bool_
        if not (integer or np.issubdtype(source.dtype, np.floating)):
            raise DataError(f"{what} is not numeric; expected integer or float pixels")
        x = torch.from_numpy(np.ascontiguousarray(source).astype(np.float32))
    elif isinstance(source, torch.Tensor):
        what = f"the tensor (dtype {source.dtype})"
        integer = not (source.is_floating_point() or source.is_complex())
        if source.is_complex():
            raise DataError(f"{what} is complex; expected real pixel values")
        x = source.detach().to("cpu", torch.float32)
    else:
        raise DataError(
            f"unsupported image source of type {type(source).__name__}: expected a folder path, "
            "an image file path, a torch.Tensor or a numpy array"
        )
    x = _as_nchw(x, what)
    if x.shape[0] == 0:
        raise DataError(f"{what} holds no image (shape {tuple(x.shape)})")
    lo, hi = value_range if value_range is not None else _infer_range(x, integer)
    if hi <= lo:
        raise DataError(f"value_range must be (low, high) with low < high, got {(lo, hi)}")
    x = (x - lo) / (hi - lo) * 2.0 - 1.0
    x = _convert_channels(x, channels, what)
    return _to_square_size(x, size).clamp_(-1.0, 1.0).contiguous()


__all__ = ["image_extensions", "list_image_files", "load_image_file", "load_image_folder", "load_images"]
