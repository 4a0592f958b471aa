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
    from fastunlearn.engine.loop import cpu_threads
    from fastunlearn.models import family_of, load_model

    out = _out_format(args.out)
    prompts = list(args.prompt) if args.prompt is not None else (_read_prompts(args.prompts) if args.prompts else None)
    dev = _device(args.device)
    with _loading_bars(not args.quiet):
        adapter = load_model(args.model, trust_pickle=args.trust_pickle).to(dev)
    if out.suffix.lower() == ".png" and adapter.image_shape[0] not in (1, 3):
        raise UserInputError(f"--out {args.out}: a PNG grid shows 1- or 3-channel images; this model draws "
                             f"{adapter.image_shape[0]} channels: write .npz instead")
    threads_before = torch.get_num_threads()
    threads = cpu_threads(adapter, dev, None)
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        images, cond = generate_images(adapter, prompts=prompts, classes=args.classes, num=args.num, seed=args.seed,
                                       guidance=args.guidance, steps=args.steps, batch_size=args.batch_size,
                                       progress=not args.quiet)
    finally:
        torch.set_num_threads(threads_before)
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


def add_subcommand(subparsers: Any) -> None:
    """Register ``generate`` on the ``fastunlearn`` parser's sub-parsers."""
    p = subparsers.add_parser(
        "generate", help="draw images from any model (prompts or class labels) into a PNG grid or an .npz",
        description="Draw --num images per prompt (text-to-image models) or per class label (class-conditional "
                    "DDPMs) with deterministic DDIM. The initial noise of row i depends only on --seed and i, so "
                    "the same prompt list drawn before and after unlearning gives comparable images. The "
                    "extension of --out picks the format: .png (a labelled grid, one row per prompt or class) or "
                    ".npz (images float32 [rows, C, H, W] in [-1, 1], prompts / labels per row).")
    p.add_argument("--model", required=True,
                   help="zoo:NAME, a model or pipeline directory (e.g. a run's --out) or a hub id")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prompt", action="append", metavar="TEXT",
                      help="a prompt, taken verbatim, commas and all (repeatable: one grid row each)")
    what.add_argument("--prompts", metavar="FILE", help="a text file of prompts, one per line (blank lines skipped)")
    what.add_argument("--class", dest="classes", action="append", metavar="C",
                      help="a class label of a class-conditional DDPM, or a class (index or name) of a text-to-image "
                           "model whose concepts name classes (repeatable)")
    p.add_argument("--num", type=int, required=True, metavar="N", help="images per prompt / class")
    p.add_argument("--seed", type=int, required=True, metavar="S", help="seed of the initial noise")
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


__all__ = ["generate_images", "initial_noise", "default_guidance", "concept_index", "add_subcommand", "FORMATS",
           "DEFAULT_STEPS"]
