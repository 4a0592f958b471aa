"""Forget/retain selection: which samples the model must forget, and which it must keep.

A selector is one of

- ``"class:C[,C...]"`` (or ``"class=C"``, ranges ``"class:0-4"``): every sample of those classes;
- ``"index:I[,I...]"`` (ranges ``"index:10-19"`` allowed) or a Python list of ints: samples
  by their index in the *original* 1,797-image ``load_digits`` order (stable across splits,
  see :attr:`fastunlearn.data.digits.DigitsData.indices`);
- a path to a folder of image files (any PIL format): the user's own images. If every image
  lies in a sub-folder named by an integer (``forget/3/a.png``) that integer is its label,
  otherwise labels are -1 (unknown).
- a path to a ``.npy`` file of model-ready images (``[N, C, H, W]`` floats in [-1, 1] at the
  model's size; read without pickle, unlabelled). In-memory image arrays are refused: the
  run's ``config.yaml`` must be able to name its data.

The retain set is the complement of the forget set within the pool (default: the digits
train split) unless a retain selector is given. A retain selector may also be

- ``"proxy:NAME"`` (retain only): images from another source than the pool, of every class that is
  not forgotten (:mod:`fastunlearn.data.proxy`; ``proxy:mnist`` = MNIST digits in the digits
  layout). The forget set must be labelled (its classes are what the proxy drops), and the
  description says how many proxy images remain.

Both sides must be non-empty and, when both come from the pool, disjoint; every violation is a
:class:`~fastunlearn.data.errors.DataError` whose message says what matched and what exists.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from fastunlearn.data.digits import DigitsData, load_digits_split
from fastunlearn.data.errors import DataError
from fastunlearn.data.sources import load_image_folder

Selector = str | PathLike | Sequence[int]

_SELECTOR_RE = re.compile(r"^\s*(class|index)\s*[:=]\s*(.*?)\s*$", re.IGNORECASE)
_PROXY_RE = re.compile(r"^\s*proxy\s*[:=]\s*(.*?)\s*$", re.IGNORECASE)
_MAX_RANGE = 10_000_000
_FORMS = (
    "`class:C[,C...]`, `index:I[,I...]` (ranges like `class:0-4`, `index:10-19`), "
    "a list of ints, an existing folder of images, a .npy file of images, "
    "or (retain only) `proxy:mnist`"
)


@dataclass(frozen=True)
class ForgetRetain:
    """The two sides of an unlearning job, ready for the methods.

    ``*_indices`` are original ``load_digits`` indices for pool samples and -1 for images
    that came from a folder; ``*_labels`` are -1 where the label is unknown.
    """

    forget_images: torch.Tensor
    forget_labels: torch.Tensor
    retain_images: torch.Tensor
    retain_labels: torch.Tensor
    forget_classes: list[int]
    retain_classes: list[int]
    description: str
    forget_indices: torch.Tensor | None = None
    retain_indices: torch.Tensor | None = None


def format_classes(classes: Sequence[int]) -> str:
    """``[0,1,2,3,5]`` → ``"0–3, 5"`` (compact, for messages)."""
    cs = sorted(set(int(c) for c in classes))
    if not cs:
        return "none"
    parts, start, prev = [], cs[0], cs[0]
    for c in cs[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}–{prev}")
        if c is not None:
            start = prev = c
    return ", ".join(parts)


def _parse_ints(body: str, selector: str) -> list[int]:
    values: list[int] = []
    for tok in (t.strip() for t in body.split(",")):
        m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(\d+))?", tok) if tok else None
        if m is None:
            raise DataError(
                f"malformed selector `{selector}`: {tok!r} is not an integer or a range like 10-19; "
                f"expected {_FORMS}"
            )
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise DataError(f"malformed selector `{selector}`: the range {tok!r} is empty")
        if hi - lo >= _MAX_RANGE:
            raise DataError(f"selector `{selector}`: the range {tok!r} spans more than {_MAX_RANGE:,} values")
        values.extend(range(lo, hi + 1))
    return values


def _selector_text(selector: Selector) -> str:
    if isinstance(selector, (str, PathLike)):
        return str(selector)
    if isinstance(selector, (torch.Tensor, np.ndarray)) and selector.ndim != 1:
        return f"an array of shape {tuple(selector.shape)}"
    return "index:" + ",".join(str(i) for i in (selector.tolist() if hasattr(selector, "tolist") else selector))


def _select(selector: Selector, pool: DigitsData, side: str, size: int, channels: int) -> DigitsData:
    """One selector → the matching samples (indices -1 for folder images)."""
    if isinstance(selector, (torch.Tensor, np.ndarray)):
        selector = _index_array(selector, side)
    text = _selector_text(selector)
    if isinstance(selector, (list, tuple, range)):
        ids = _index_list(selector, side)
        kind = "index"
    elif isinstance(selector, (str, PathLike)):
        if isinstance(selector, str) and _PROXY_RE.match(selector):
            raise DataError(f"`{text}` is a retain proxy: it selects the images to keep (--retain {text}), "
                            f"not the {side} set")
        m = _SELECTOR_RE.match(str(selector)) if isinstance(selector, str) else None
        if m is None:
            path = Path(selector)
            if path.is_dir():
                return _select_folder(path, size, channels)
            if path.is_file() and path.suffix.lower() == ".npy":
                return _select_npy(path, side, size, channels)
            if path.is_file():
                raise DataError(f"{side} selector `{text}` is a file, not a .npy array; expected {_FORMS}")
            raise DataError(f"malformed selector `{text}`: expected {_FORMS}")
        kind = m.group(1).lower()
        if not m.group(2):
            raise DataError(f"malformed selector `{text}`: no value after `{kind}:`; expected {_FORMS}")
        ids = _parse_ints(m.group(2), text)
    else:
        raise DataError(
            f"unsupported {side} selector of type {type(selector).__name__}: expected {_FORMS}"
        )
    if kind == "class":
        mask = torch.isin(pool.labels, torch.tensor(ids, dtype=torch.long))
        if not bool(mask.any()):
            present = format_classes(pool.labels.unique().tolist())
            raise DataError(
                f"{side} set is empty: the selector `{text}` matched no sample (classes present: {present})"
            )
        return pool.subset(mask)
    return _select_indices(ids, pool, side, text)


def _select_indices(ids: list[int], pool: DigitsData, side: str, text: str) -> DigitsData:
    if not ids:
        raise DataError(f"{side} set is empty: the selector `{text}` lists no index")
    dup = sorted(i for i, k in Counter(ids).items() if k > 1)
    if dup:
        raise DataError(f"selector `{text}` lists indices more than once: {_preview(dup)}")
    position = {int(orig): pos for pos, orig in enumerate(pool.indices.tolist())}
    missing = [i for i in ids if i not in position]
    if missing:
        total = 1797
        outside = [i for i in missing if not 0 <= i < total]
        where = (
            f"outside the data set's indices 0–{total - 1}" if outside
            else "not in the pool the selection draws from (the digits train split; "
            "indices refer to the original load_digits order)"
        )
        raise DataError(f"selector `{text}`: {len(missing)} index(es) are {where}: {_preview(missing)}")
    return pool.subset(torch.tensor([position[i] for i in ids], dtype=torch.long))


def _index_array(x: torch.Tensor | np.ndarray, side: str) -> list[int]:
    """A 1-D integer tensor/array selects by index; anything else (a batch of images) is refused clearly."""
    shape = tuple(x.shape)
    integer = (not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool) \
        if isinstance(x, torch.Tensor) else np.issubdtype(x.dtype, np.integer)
    if len(shape) == 1 and integer:
        return [int(i) for i in x.tolist()]
    if len(shape) >= 2:
        raise DataError(
            f"the {side} selector is an in-memory array of shape {shape}: images are given as a folder of "
            f"image files or a .npy file of [N, C, H, W] floats in [-1, 1] (np.save('{side}.npy', x)), so the "
            "run's config.yaml can name them"
        )
    raise DataError(f"the {side} selector is a {len(shape)}-D array of {x.dtype}; a tensor/array selects "
                    "samples by index and must be 1-D integers")


def _index_list(values: Sequence, side: str) -> list[int]:
    ids = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"the {side} selector lists {v!r} ({type(v).__name__}); indices must be integers")
        ids.append(int(v))
    return ids


def _select_npy(path: Path, side: str, size: int, channels: int) -> DigitsData:
    """A ``.npy`` file of model-ready images: ``[N, C, H, W]`` floats in [-1, 1] at the model's size (unlabelled).

    Unlike image files (decoded, converted and resized on purpose), an array is taken as the model's input,
    so every mismatch is an error naming what was expected.
    """
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {side} images {str(path)!r} as a .npy array without pickle: {exc}") from None
    what = f"{side} images in {str(path)!r}"
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{what} have dtype {x.dtype}; expected floats in [-1, 1] (for 0–255 pixels: x.astype('float32') / 127.5 - 1)"
        )
    if x.ndim != 4 or tuple(x.shape[1:]) != (channels, size, size):
        got = "×".join(str(s) for s in x.shape[1:]) if x.ndim == 4 else f"shape {tuple(x.shape)}"
        raise DataError(
            f"{what} do not fit the model: expected [N, {channels}, {size}, {size}], i.e. {channels}×{size}×{size} "
            f"(channels×height×width), got {got}; fastunlearn.data.sources.load_images(x, size={size}, "
            f"channels={channels}) converts"
        )
    if x.shape[0] == 0:
        raise DataError(f"{side} set is empty: {str(path)!r} holds no image (shape {tuple(x.shape)})")
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{what} hold NaN or Inf values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1.001 or hi > 1.001:
        raise DataError(f"{what} range over [{lo:g}, {hi:g}]; expected [-1, 1] (for [0, 1]: x * 2 - 1)")
    n = t.shape[0]
    return DigitsData(t.clamp(-1.0, 1.0), torch.full((n,), -1, dtype=torch.long), torch.full((n,), -1, dtype=torch.long))


def _select_folder(path: Path, size: int, channels: int) -> DigitsData:
    images, paths = load_image_folder(path, size, channels)
    parents = [p.parent.relative_to(path).parts for p in paths]
    labelled = all(len(parts) == 1 and parts[0].isdigit() for parts in parents)
    labels = [int(parts[0]) if labelled else -1 for parts in parents]
    return DigitsData(
        images, torch.tensor(labels, dtype=torch.long), torch.full((len(paths),), -1, dtype=torch.long)
    )


def _select_proxy(name: str, forget: DigitsData, forget_text: str, text: str, size: int,
                  channels: int) -> tuple[DigitsData, str]:
    """``proxy:NAME`` → the proxy's images of every class the forget set does not hold, and a note for the
    description saying how many of the proxy's images remain."""
    from fastunlearn.data.proxy import PROXIES, load_proxy

    if not name:
        raise DataError(f"malformed selector `{text}`: no proxy named after `proxy:`; e.g. `proxy:mnist`")
    if bool((forget.labels < 0).any()):
        raise DataError(f"`{text}` keeps the proxy's images of the classes that are not forgotten, but the forget "
                        f"set `{forget_text}` has images without a class label: select the forget set by class "
                        "(class:C) or put its images in sub-folders named by class")
    proxy = load_proxy(name)
    c, h, w = proxy.images.shape[1:]
    if (c, h, w) != (channels, size, size):
        raise DataError(f"retain proxy `{text}` holds {c}×{h}×{w} images (channels×height×width), but the model "
                        f"takes {channels}×{size}×{size}: the proxy fits models of the digits layout only")
    forgotten = sorted(forget.labels.unique().tolist())
    keep = ~torch.isin(proxy.labels, torch.tensor(forgotten, dtype=torch.long))
    if not bool(keep.any()):
        have = format_classes(proxy.labels.unique().tolist())
        raise DataError(f"retain proxy `{text}` is empty once the forget classes {format_classes(forgotten)} are "
                        f"dropped: it holds classes {have} only; forget fewer classes or give another retain "
                        "selector")
    kept = proxy.subset(keep)
    return kept, (f" ({PROXIES[name.strip().lower()]}: {len(kept)} of its {len(proxy)} images remain, those of the "
                  f"forget classes {format_classes(forgotten)} dropped)")


def _preview(values: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in list(values)[:limit])
    return shown + (f", … ({len(values) - limit} more)" if len(values) > limit else "")


def _describe(side: str, text: str, data: DigitsData) -> str:
    classes = [c for c in data.labels.unique().tolist() if c >= 0]
    cls = f"classes {format_classes(classes)}" if classes else "unlabelled"
    return f"{side}: {len(data)} images ({cls}) from `{text}`"


def select_forget_retain(
    forget: Selector,
    retain: Selector | None = None,
    pool: DigitsData | None = None,
    image_size: int = 16,
    channels: int = 1,
) -> ForgetRetain:
    """Build the forget and retain sets from selectors (see the module doc for the forms).

    Args:
        forget: what to forget.
        retain: what to keep; default: every pool sample not in the forget set.
        pool: the labelled data that class/index selectors draw from; default: the digits
            train split (the data the shipped models were trained on).
        image_size, channels: the model's input, for folder selectors.

    Raises:
        DataError: malformed selector, an empty side, or samples on both sides.
    """
    pool = pool if pool is not None else load_digits_split("train")
    forget_text = _selector_text(forget)
    f = _select(forget, pool, "forget", image_size, channels)
    if len(f) == 0:
        raise DataError(f"forget set is empty: the selector `{forget_text}` matched no sample")
    note = ""
    if retain is None:
        retain_text = f"the rest of the pool (not `{forget_text}`)"
        forget_ids = f.indices[f.indices >= 0]
        r = pool.subset(~torch.isin(pool.indices, forget_ids))
        if len(r) == 0:
            raise DataError(
                f"retain set is empty: the forget selector `{forget_text}` takes all {len(pool)} "
                "samples of the pool; forget fewer or give a retain selector"
            )
    elif isinstance(retain, str) and (proxy := _PROXY_RE.match(retain)):
        retain_text = retain.strip()
        r, note = _select_proxy(proxy.group(1), f, forget_text, retain_text, image_size, channels)
    else:
        retain_text = _selector_text(retain)
        r = _select(retain, pool, "retain", image_size, channels)
        if len(r) == 0:
            raise DataError(f"retain set is empty: the selector `{retain_text}` matched no sample")
        both = sorted(set(f.indices[f.indices >= 0].tolist()) & set(r.indices[r.indices >= 0].tolist()))
        if both:
            shared = f.labels[torch.isin(f.indices, torch.tensor(both, dtype=torch.long))]
            shared = [c for c in shared.unique().tolist() if c >= 0]
            of = f" of class{'es' if len(shared) != 1 else ''} {format_classes(shared)}" if shared else ""
            raise DataError(
                f"{len(both)} sample{'s are' if len(both) != 1 else ' is'} in both the forget and the "
                f"retain set{of}: original indices {_preview(both)} (forget `{forget_text}`, retain "
                f"`{retain_text}`); make the selectors disjoint"
            )
    forget_classes = sorted(c for c in f.labels.unique().tolist() if c >= 0)
    retain_classes = sorted(c for c in r.labels.unique().tolist() if c >= 0)
    description = f"{_describe('forget', forget_text, f)}; {_describe('retain', retain_text, r)}{note}"
    return ForgetRetain(
        forget_images=f.images, forget_labels=f.labels,
        retain_images=r.images, retain_labels=r.labels,
        forget_classes=forget_classes, retain_classes=retain_classes,
        description=description, forget_indices=f.indices, retain_indices=r.indices,
    )


__all__ = ["ForgetRetain", "Selector", "format_classes", "select_forget_retain"]
