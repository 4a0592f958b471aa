"""``fastunlearn generate``: the one way to look at any model's outputs (ARCHITECTURE.md, "Model families").

``fastunlearn generate --model M (--prompt TEXT ... | --prompts FILE | --class C ...) --num N --seed S
[--guidance G] [--steps K] --out FILE`` draws ``N`` images per prompt (text-to-image models) or per class label
(class-conditional DDPMs; a text-to-image model whose ``concepts`` name classes takes ``--class`` too) with
deterministic DDIM (eta 0), and writes them at exactly ``FILE``:

- ``.png``: a labelled grid, one row per prompt / class in the order given, its label at the row's start;
- ``.npz``: ``images`` float32 ``[rows, C, H, W]`` in [-1, 1], the conditioning of each row (``prompts``, a
  numpy unicode array that loads with ``allow_pickle=False``, and/or ``labels`` int64), and the settings
  (``seed``, ``steps``, ``guidance``, ``num``, ``model``).

Rows are prompt-major: rows ``k·N … k·N+N−1`` belong to prompt (or class) ``k``. **The initial noise of row i
depends only on the seed and i** (:func:`initial_noise`), so the same prompt list drawn from a model before and
after unlearning gives images that correspond row by row, and a prompt list that extends another one starts
with the same images. :func:`generate_images` is the Python entry point the command calls.

Image-to-image models complete masked images instead: ``fastunlearn generate --model M --images FILE.npz
[--mask center:8] [--num N] [--seed S] [--steps K] --out FILE``. ``FILE.npz`` holds ``images`` float32
``[N, C, H, W]`` in [-1, 1] at the model's size (other keys, e.g. ``labels``, are ignored); ``--mask`` defaults
to the model's own. Rows are input-major: row ``i·N + j`` is the j-th completion of input i (``--num`` 1 by
default), its hole started from ``initial_noise(seed, rows, …)[i·N + j]`` (the inpainter; the masked
autoencoder is deterministic), the known pixels the input's bitwise. The ``.npz`` holds ``images`` and the
settings (``seed``, ``steps``, ``num``, ``mask``, ``model``); the ``.png`` grid one row per input: the masked
input, then its completions. :func:`complete_images` is the Python entry point, and the image-to-image
evaluation (:mod:`fastunlearn.eval.i2i`) completes through it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fastunlearn.errors import UserInputError

#: What the extension of ``--out`` selects.
FORMATS = {".png": "a labelled grid", ".npz": "images and the conditioning of each row"}
#: Default DDIM steps of ``fastunlearn generate``.
DEFAULT_STEPS = 50


def initial_noise(seed: int, rows: int, shape: Sequence[int]) -> torch.Tensor:
    """The initial noise of ``rows`` samples, float32 ``[rows, *shape]``: row i is the (i+1)-th draw of
    ``torch.randn(shape)`` from ``torch.Generator().manual_seed(seed)`` (CPU).

    Drawn row by row rather than as one ``[rows, *shape]`` tensor: torch's CPU normal sampler fills a tensor
    in blocks of 16 values and redraws the last block when the size is not a multiple of 16, so one big draw
    would make row i depend on how many rows follow it.
    """
    g = torch.Generator().manual_seed(int(seed))
    shape = tuple(int(s) for s in shape)
    if rows == 0:
        return torch.empty((0, *shape))
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for _ in range(rows)])


def generate_images(model_or_adapter: Any, prompts: Sequence[str] | None = None,
                    classes: Sequence[int | str] | None = None, num: int = 1, seed: int = 0,
                    guidance: float | None = None, steps: int = DEFAULT_STEPS, batch_size: int = 16,
                    progress: bool = False) -> tuple[torch.Tensor, list[str] | torch.Tensor | None]:
    """``num`` DDIM samples (eta 0) per prompt or per class, prompt-major, with row i started from
    ``initial_noise(seed, rows, …)[i]`` (the denoiser's input shape: latents for a latent model).

    Args:
        model_or_adapter: an adapter or anything :func:`fastunlearn.models.load_model` takes.
        prompts: text-to-image prompts, taken verbatim (each checked: non-empty, within the tokenizer's length).
        classes: class labels: ints for a class-conditional DDPM; for a text-to-image model whose concepts name
            classes, an index or a class name, turned into the concepts' prompt (``template.format(name)``).
        num: images per prompt / class. seed: the noise seed. steps: DDIM steps.
        guidance: classifier-free guidance weight w (ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅))); default: the
            family's (text-to-image: :data:`fastunlearn.models.t2i.DEFAULT_GUIDANCE`; DDPM: 1.0, no guidance).
        batch_size: rows per sampler call. The noise is fixed per row, so the batching does not choose it;
            the backend's kernels may still round differently per batch size (≈1e-6 on CPU).
        progress: a tqdm bar over the rows on stderr.

    Returns:
        ``(images, conditioning)``: float32 ``[num·K, C, H, W]`` in [-1, 1] on the CPU, and per row the prompt
        text (a list of str, text-to-image), the class label (int64 tensor, DDPM) or None (an unconditional
        DDPM, which takes neither prompts nor classes and draws ``num`` rows).
    """
    from tqdm.auto import tqdm

    from fastunlearn.models import family_of, load_model

    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise UserInputError(f"--num must be a positive integer (images per prompt or class), got {num!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserInputError(f"--steps must be a positive integer (DDIM steps), got {steps!r}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if prompts is not None and classes is not None:
        raise UserInputError("give prompts or classes, not both")
    adapter = load_model(model_or_adapter)
    if family_of(adapter) == "i2i":
        raise UserInputError("this is an image-to-image model: it completes masked images rather than drawing from "
                             "prompts or classes; give the images to complete with --images FILE.npz "
                             "(complete_images in Python)")
    guidance = default_guidance(adapter) if guidance is None else float(guidance)
    per_row: Any
    if family_of(adapter) == "t2i":
        texts = _t2i_prompts(adapter, prompts, classes)
        adapter.prompt_ids(texts)  # every prompt checked and encoded once, before any sampling
        per_row = [p for p in texts for _ in range(num)]
        conditioning: Any = list(per_row)
        rows, shape = len(per_row), adapter.latent_shape
    else:
        labels = _ddpm_labels(adapter, prompts, classes)
        if guidance != 1.0 and adapter.null_label is None:
            raise UserInputError(
                f"--guidance {guidance:g} needs a model trained with a null class (classifier-free guidance); "
                "this DDPM has none: leave --guidance at 1")
        per_row = conditioning = labels.repeat_interleave(num) if labels is not None else None
        rows, shape = (len(per_row) if per_row is not None else num), adapter.image_shape
    noise = initial_noise(seed, rows, shape)
    out = []
    with tqdm(total=rows, disable=not progress, desc="generate", unit="img", file=sys.stderr) as bar:
        for start in range(0, rows, batch_size):
            stop = min(rows, start + batch_size)
            cond = per_row[start:stop] if per_row is not None else None
            out.append(adapter.generate(stop - start, cond, steps=steps, guidance_scale=guidance,
                                        noise=noise[start:stop], batch_size=batch_size))
            bar.update(stop - start)
    return torch.cat(out), conditioning


def complete_images(model_or_adapter: Any, images: torch.Tensor, mask: Any = None, num: int = 1, seed: int = 0,
                    steps: int = DEFAULT_STEPS, batch_size: int = 16, noise: torch.Tensor | None = None,
                    progress: bool = False) -> torch.Tensor:
    """``num`` completions of each of ``images`` by an image-to-image model, input-major.

    Args:
        model_or_adapter: an image-to-image adapter or anything :func:`fastunlearn.models.load_model` takes.
        images: ``[N, C, H, W]`` in [-1, 1] at the model's size (checked: a mistake is a :class:`UserInputError`).
        mask: ``center:K`` / ``outpaint:K`` or a :class:`~fastunlearn.models.masks.Mask`; None: the model's own.
        num: completions per input. seed: the noise seed. steps: DDIM steps of the inpainter (the masked
            autoencoder completes in one pass and ignores it).
        batch_size: inputs per completion call; the noise is fixed per row, so it does not choose the images.
        noise: the initial noise ``[N·num, C, H, W]`` instead of ``initial_noise(seed, N·num, (C, H, W))``.

    Returns:
        float32 ``[N·num, C, H, W]`` in [-1, 1] on the CPU; row ``i·num + j`` is the j-th completion of input
        i, started from noise row ``i·num + j`` (so a row depends only on the seed, its input and its index,
        not on the rows after it), with the input's known pixels bitwise.
    """
    from tqdm.auto import tqdm

    from fastunlearn.models import family_of, load_model

    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise UserInputError(f"--num must be a positive integer (completions per input image), got {num!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserInputError(f"--steps must be a positive integer (DDIM steps), got {steps!r}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    adapter = load_model(model_or_adapter)
    if family_of(adapter) != "i2i":
        kind = "text-to-image" if family_of(adapter) == "t2i" else "pixel DDPM"
        raise UserInputError(f"--images completes masked images, which only an image-to-image model (an inpainter "
                             f"or a masked autoencoder) does; this is a {kind} model: use generate_images")
    from fastunlearn.models.masks import as_mask

    chosen = as_mask(mask, adapter.image_shape, default=adapter.mask)
    check_input_images(images, adapter)
    rows = images.shape[0] * num
    if noise is None:
        noise = initial_noise(seed, rows, adapter.image_shape)
    elif tuple(noise.shape) != (rows, *adapter.image_shape):
        raise UserInputError(f"noise must be [{rows}, {', '.join(map(str, adapter.image_shape))}], "
                             f"got {list(noise.shape)}")
    out = []
    with tqdm(total=images.shape[0], disable=not progress, desc="complete", unit="img", file=sys.stderr) as bar:
        for start in range(0, images.shape[0], batch_size):
            stop = min(images.shape[0], start + batch_size)
            out.append(adapter.complete(images[start:stop], chosen, steps=steps, num=num,
                                        noise=noise[start * num:stop * num], batch_size=(stop - start) * num))
            bar.update(stop - start)
    return torch.cat(out) if out else torch.empty((0, *adapter.image_shape))


def check_input_images(images: Any, adapter: Any, what: str = "--images") -> None:
    """A :class:`UserInputError` unless ``images`` are a float ``[N ≥ 1, C, H, W]`` tensor at ``adapter``'s size,
    finite, in [-1, 1] (1e-3 of slack)."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = f"dtype {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserInputError(f"{what}: images must be floats in [-1, 1], got {got} (for 0–255 pixels: "
                             "x.astype('float32') / 127.5 - 1)")
    adapter.check_images(images, what)
    if images.shape[0] == 0:
        raise UserInputError(f"{what} holds no image (shape {list(images.shape)})")
    if not bool(torch.isfinite(images).all()):
        raise UserInputError(f"{what} hold NaN or Inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:
        raise UserInputError(f"{what} range over [{lo:g}, {hi:g}]; expected [-1, 1] (for [0, 1]: x * 2 - 1)")


def read_images_npz(file: str) -> torch.Tensor:
    """The ``images`` array of an ``.npz`` (loaded without pickle; other keys ignored) as float32."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserInputError(f"--images {file}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                held = ", ".join(data.files) or "nothing"
                raise UserInputError(f"--images {file} has no 'images' array (it holds {held}): save the inputs as "
                                     "np.savez(FILE, images=x), x float32 [N, C, H, W] in [-1, 1]")
            x = data["images"]
    except UserInputError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise UserInputError(f"--images {file}: cannot read it as an .npz without pickle ({exc})") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise UserInputError(f"--images {file}: 'images' has dtype {x.dtype}; expected floats in [-1, 1] (for 0–255 "
                             "pixels: x.astype('float32') / 127.5 - 1)")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def default_guidance(adapter: Any) -> float:
    """The guidance weight ``generate`` uses when none is given: the text-to-image adapter's
    :data:`~fastunlearn.models.t2i.DEFAULT_GUIDANCE`, 1.0 (no guidance) for a DDPM."""
    from fastunlearn.models import family_of
    from fastunlearn.models.t2i import DEFAULT_GUIDANCE

    return float(DEFAULT_GUIDANCE) if family_of(adapter) == "t2i" else 1.0


def _t2i_prompts(adapter: Any, prompts: Sequence[str] | None, classes: Sequence[int | str] | None) -> list[str]:
    if classes is not None:
        indices = [concept_index(adapter, c) for c in classes]
        template = adapter.concepts.get("template") or "{}"
        return [template.format(adapter.concepts["classes"][i]) for i in indices]
    if not prompts:
        raise UserInputError("this is a text-to-image model: give what to draw with --prompt TEXT (repeatable) "
                             "or --prompts FILE (one per line)")
    return list(prompts)


def concept_index(adapter: Any, c: int | str) -> int:
    """The index of class ``c`` (an index or a name) among the ``concepts["classes"]`` of a text-to-image
    model; its prompt is ``concepts["template"].format(name)`` (the name alone without a template)."""
    concepts = adapter.concepts or {}
    names = [str(n) for n in concepts.get("classes") or []]
    if not names:
        raise UserInputError(f"--class {c}: this text-to-image model names no classes (no concepts recorded in its "
                             "fastunlearn.json); give prompts with --prompt TEXT or --prompts FILE")
    text = str(c).strip()
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
        return int(text)
    raise UserInputError(f"--class {c}: not a class of this model; it knows 0–{len(names) - 1} ({', '.join(names)})")


def _ddpm_labels(adapter: Any, prompts: Sequence[str] | None, classes: Sequence[int | str] | None):
    if prompts:
        kind = "class-conditional (--class C)" if adapter.conditional else "unconditional (no conditioning flag)"
        raise UserInputError(f"this model is a pixel DDPM that takes no text prompts: it is {kind}")
    if not adapter.conditional:
        if classes:
            raise UserInputError("this DDPM is unconditional: drop --class (it draws --num images with no label)")
        return None
    if not classes:
        raise UserInputError(f"this DDPM is class-conditional: give the classes to draw with --class C (repeatable; "
                             f"it knows 0–{adapter.num_classes - 1})")
    labels = []
    for c in classes:
        text = str(c).strip()
        if not text.lstrip("-").isdigit():
            raise UserInputError(f"--class {c}: a DDPM's class is an integer label (0–{adapter.num_classes - 1})")
        labels.append(int(text))
    labels = torch.tensor(labels, dtype=torch.long)
    adapter.check_labels(labels, "--class")
    return labels


# ---------------------------------------------------------------------- the command
def _out_format(out: str) -> Path:
    path = Path(out).expanduser()
    if path.suffix.lower() not in FORMATS:
        kinds = "; ".join(f"{ext} ({what})" for ext, what in FORMATS.items())
        raise UserInputError(f"--out {out}: the extension picks the format, and {path.suffix or 'no extension'!r} "
                             f"is not one: use {kinds}")
    if path.is_dir():
        raise UserInputError(f"--out {out} is a directory; give a file name ending in .png or .npz")
    # Checked before any work, created only when the file is written (a failed command leaves no folder behind).
    existing = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {out}: its folder {path.parent} cannot be created ({existing} is not a "
                             "writable directory)")
    return path


def _read_prompts(file: str) -> list[str]:
    """One prompt per line; surrounding whitespace is dropped and blank lines are skipped."""
    path = Path(file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"--prompts {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"--prompts {file}: cannot read it as UTF-8 text ({exc})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserInputError(f"--prompts {file} holds no prompt (one per line; blank lines are skipped)")
    return prompts


def _write_atomic(path: Path, write) -> None:
    """``write(file object)`` into a temporary file beside ``path``, then rename it over ``path`` (creating
    ``path``'s folder): a reader never sees a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create the folder {path.parent} of {path} ({exc.strerror or exc})") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_png(path: Path, images: torch.Tensor, row_labels: list[str], num: int) -> None:
    from fastunlearn.eval.grids import _render_rows

    h, w = images.shape[2:]
    scale = max(1, 64 // max(h, w))  # small images (16×16 digits) upscaled to 64 px tiles, SD-sized ones as they are
    rows = [(label, images[k * num:(k + 1) * num]) for k, label in enumerate(row_labels)]
    grid = _render_rows(rows, None, scale, num, 4)
    _write_atomic(path, lambda f: grid.save(f, format="PNG"))


@contextlib.contextmanager
def _loading_bars(show: bool):
    """diffusers' and transformers' loading progress bars on (as they are) or off (``--quiet``) while loading."""
    from diffusers.utils import logging as d_logging
    from transformers.utils import logging as t_logging

    before = [(m, m.is_progress_bar_enabled()) for m in (d_logging, t_logging)]
    if not show:
        for m, _ in before:
            m.disable_progress_bar()
    try:
        yield
    finally:
        for m, enabled in before:
            (m.enable_progress_bar if enabled else m.disable_progress_bar)()


def _generate(args: argparse.Namespace) -> int:
    from fastunlearn.cli_eval import _device
    from fastunlearn.engine.loop import cpu_threads_for
    from fastunlearn.models import family_of, load_model

    out = _out_format(args.out)
    if args.images is not None:
        return _complete(args, out)
    if args.mask is not None:
        raise UserInputError("--mask goes with --images FILE.npz (the masked images an image-to-image model completes)")
    missing = [flag for flag, value in (("--num N", args.num), ("--seed S", args.seed)) if value is None]
    if missing:
        raise UserInputError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required when drawing "
                             "from prompts or classes (images per prompt / class, the noise seed)")
    prompts = list(args.prompt) if args.prompt is not None else (_read_prompts(args.prompts) if args.prompts else None)
    dev = _device(args.device)
    with _loading_bars(not args.quiet):
        adapter = load_model(args.model, trust_pickle=args.trust_pickle).to(dev)
    if out.suffix.lower() == ".png" and adapter.image_shape[0] not in (1, 3):
        raise UserInputError(f"--out {args.out}: a PNG grid shows 1- or 3-channel images; this model draws "
                             f"{adapter.image_shape[0]} channels: write .npz instead")
    t0 = time.perf_counter()
    with cpu_threads_for(adapter, dev):
        images, cond = generate_images(adapter, prompts=prompts, classes=args.classes, num=args.num, seed=args.seed,
                                       guidance=args.guidance, steps=args.steps, batch_size=args.batch_size,
                                       progress=not args.quiet)
    seconds = time.perf_counter() - t0
    t2i = family_of(adapter) == "t2i"
    guidance = args.guidance if args.guidance is not None else default_guidance(adapter)
    labels = None
    if args.classes is not None:
        labels = (torch.tensor([concept_index(adapter, c) for c in args.classes]).repeat_interleave(args.num)
                  if t2i else cond)
    if cond is None:
        row_labels, what = ["unconditional"], "unconditional"
    else:
        row_labels = list(cond[::args.num]) if t2i else [str(int(c)) for c in cond[::args.num]]
        noun = "class" if args.classes else "prompt"
        what = f"{len(row_labels)} {noun}{'' if len(row_labels) == 1 else ('es' if args.classes else 's')}"
    if out.suffix.lower() == ".png":
        _write_png(out, images, row_labels, args.num)
    else:
        arrays = {"images": images.numpy().astype(np.float32), "seed": np.int64(args.seed),
                  "steps": np.int64(args.steps), "guidance": np.float64(guidance), "num": np.int64(args.num),
                  "model": np.str_(str(args.model))}
        if t2i:
            arrays["prompts"] = np.array(cond, dtype=np.str_)
        if labels is not None:
            arrays["labels"] = labels.numpy().astype(np.int64)
        # No object arrays (nothing to unpickle); np.savez dates every member 1980-01-01: same arrays, same bytes.
        _write_atomic(out, lambda f: np.savez(f, **arrays))
    print(f"wrote {out}: {images.shape[0]} images ({what} × {args.num}) from {args.model}, {args.steps} DDIM steps, "
          f"guidance {guidance:g}, seed {args.seed}, {seconds:.1f}s on {dev}")
    return 0


def _complete(args: argparse.Namespace, out: Path) -> int:
    """``fastunlearn generate --images FILE.npz``: completions of an image-to-image model (module docstring)."""
    from fastunlearn.cli_eval import _device
    from fastunlearn.engine.loop import cpu_threads_for
    from fastunlearn.models import family_of, load_model
    from fastunlearn.models.masks import as_mask

    if args.guidance is not None:
        raise UserInputError("--guidance is classifier-free guidance of prompts and classes; completing images "
                             "takes none: drop it")
    num = 1 if args.num is None else args.num
    seed = 0 if args.seed is None else args.seed
    images = read_images_npz(args.images)
    dev = _device(args.device)
    with _loading_bars(not args.quiet):
        adapter = load_model(args.model, trust_pickle=args.trust_pickle)
    if family_of(adapter) != "i2i":
        kind = "text-to-image" if family_of(adapter) == "t2i" else "pixel DDPM"
        raise UserInputError(f"--images completes masked images, which only an image-to-image model does; "
                             f"{args.model} is a {kind} model (give --prompt or --class instead)")
    adapter.to(dev)
    mask = as_mask(args.mask, adapter.image_shape, default=adapter.mask)
    if out.suffix.lower() == ".png" and adapter.image_shape[0] not in (1, 3):
        raise UserInputError(f"--out {args.out}: a PNG grid shows 1- or 3-channel images; this model completes "
                             f"{adapter.image_shape[0]} channels: write .npz instead")
    t0 = time.perf_counter()
    with cpu_threads_for(adapter, dev):
        completions = complete_images(adapter, images, mask, num=num, seed=seed, steps=args.steps,
                                      batch_size=args.batch_size, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    if out.suffix.lower() == ".png":
        from fastunlearn.eval.grids import _render_rows

        h, w = images.shape[2:]
        rows = [(str(i), torch.cat([mask.apply(images[i:i + 1]), completions[i * num:(i + 1) * num]]))
                for i in range(images.shape[0])]
        grid = _render_rows(rows, None, max(1, 64 // max(h, w)), num + 1, 4)
        _write_atomic(out, lambda f: grid.save(f, format="PNG"))
    else:
        arrays = {"images": completions.numpy().astype(np.float32), "seed": np.int64(seed),
                  "steps": np.int64(args.steps), "num": np.int64(num), "mask": np.str_(mask.spec),
                  "model": np.str_(str(args.model))}
        _write_atomic(out, lambda f: np.savez(f, **arrays))
    print(f"wrote {out}: {completions.shape[0]} completions ({images.shape[0]} input"
          f"{'' if images.shape[0] == 1 else 's'} × {num}) from {args.model}, mask {mask.spec}, "
          f"{args.steps} DDIM steps, seed {seed}, {seconds:.1f}s on {dev}")
    return 0


def add_subcommand(subparsers: Any) -> None:
    """Register ``generate`` on the ``fastunlearn`` parser's sub-parsers."""
    p = subparsers.add_parser(
        "generate", help="draw images from any model (prompts, class labels, or masked images to complete) into a "
                         "PNG grid or an .npz",
        description="Draw --num images per prompt (text-to-image models) or per class label (class-conditional "
                    "DDPMs) with deterministic DDIM, or (image-to-image models) complete the --images of an .npz "
                    "under --mask. The initial noise of row i depends only on --seed and i, so "
                    "the same prompt list drawn before and after unlearning gives comparable images. The "
                    "extension of --out picks the format: .png (a labelled grid, one row per prompt, class or input) "
                    "or .npz (images float32 [rows, C, H, W] in [-1, 1], prompts / labels per row).")
    p.add_argument("--model", required=True,
                   help="zoo:NAME, a model or pipeline directory (e.g. a run's --out) or a hub id")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompt", action="append", metavar="TEXT",
                      help="a prompt, taken verbatim, commas and all (repeatable: one grid row each)")
    what.add_argument("--prompts", metavar="FILE", help="a text file of prompts, one per line (blank lines skipped)")
    what.add_argument("--class", dest="classes", action="append", metavar="C",
                      help="a class label of a class-conditional DDPM, or a class (index or name) of a text-to-image "
                           "model whose concepts name classes (repeatable)")
    what.add_argument("--images", metavar="FILE.npz",
                      help="image-to-image models: an .npz whose 'images' (float32 [N, C, H, W] in [-1, 1]) are "
                           "completed, row i·N+j the j-th completion of input i (other keys are ignored)")
    p.add_argument("--mask", metavar="KIND:K",
                   help="with --images: center:K (a K×K hole in the middle) or outpaint:K (the centre K×K kept); "
                        "default: the model's own")
    p.add_argument("--num", type=int, metavar="N",
                   help="images per prompt / class (required there); completions per input image (default 1)")
    p.add_argument("--seed", type=int, metavar="S",
                   help="seed of the initial noise (required with prompts / classes; default 0 with --images)")
    p.add_argument("--guidance", type=float, metavar="G",
                   help="classifier-free guidance weight (default: a text-to-image model's default guidance, named in "
                        "the summary line; 1.0 = none for a DDPM)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="K",
                   help=f"DDIM steps (default {DEFAULT_STEPS})")
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .png (grid) or .npz (arrays)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per sampler call (default 16)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickle weight files (.bin/.pt/.ckpt): they can run code; only for files you trust")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_generate)


__all__ = ["generate_images", "complete_images", "read_images_npz", "check_input_images", "initial_noise", "default_guidance", "concept_index", "add_subcommand", "FORMATS",
           "DEFAULT_STEPS"]
