"""Forget/retain selection for text-to-image models: prompts (and, where a method needs them, images).

Selectors (a string, or a list of them — repeatable on the command line):

- ``"prompt:TEXT"``: one prompt, or several separated by ``;`` (``"prompt:a cat;a kitten"``);
- ``"prompts:FILE.txt"``: one prompt per line (blank lines and lines starting with ``#`` skipped);
- ``"images:DIR"``: the user's own images of the concept (any PIL format, resized to the model's size), captioned
  with the side's prompts (round-robin when there are several). Without it, the images a method trains on are
  the frozen model's own generations for the prompts — how EraseDiff's Stable Diffusion experiments erase a
  class — made by the API once per run.

The retain side defaults to the model's other concepts: for ``zoo:digits-t2i`` the other digits' prompts
(``concepts["template"]`` with each retained class name); a model without recorded concepts (real SD) has no
default retain set, and methods that need one say so. Every mistake is a :class:`DataError` (a
``UserInputError``): an empty prompt, one longer than the tokenizer takes (never silently truncated), a prompt
on both sides, a selector of the other model family (``class:`` on a text-to-image model, ``prompt:`` on a DDPM).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from fastunlearn.data.errors import DataError

PROMPT_FORMS = "`prompt:TEXT[;TEXT...]`, `prompts:FILE.txt` (one per line), optionally with `images:DIR`"
_PREFIXES = ("prompt:", "prompts:", "images:")


def is_prompt_selector(selector: Any) -> bool:
    """Whether ``selector`` (a string or a list of strings) is a text-to-image selector."""
    items = [selector] if isinstance(selector, str) else list(selector) if isinstance(selector, (list, tuple)) else []
    return bool(items) and all(isinstance(s, str) and s.strip().lower().startswith(_PREFIXES) for s in items)


@dataclass(frozen=True)
class PromptSide:
    """One side of a text-to-image job: its prompts and, when the user gave some, their images."""

    prompts: list[str]
    images: torch.Tensor | None = None  #: ``[N, C, H, W]`` in [-1, 1], or None (the frozen model's generations)
    image_prompts: list[str] | None = None  #: the caption of each image
    text: str = ""


@dataclass(frozen=True)
class PromptSets:
    """The forget and retain prompts of a text-to-image job (and the concept each prompt names, when known)."""

    forget: PromptSide
    retain: PromptSide
    description: str
    #: prompt → class index of the model's recorded concepts (digits-t2i), for evaluation; empty when unknown
    concept_classes: dict[str, int]
    forget_classes: list[int]

    @property
    def forget_prompts(self) -> list[str]:
        return self.forget.prompts

    @property
    def retain_prompts(self) -> list[str]:
        return self.retain.prompts


def _items(selector: Any, side: str) -> list[str]:
    if isinstance(selector, str):
        return [selector]
    if isinstance(selector, (list, tuple)) and all(isinstance(s, str) for s in selector):
        return list(selector)
    raise DataError(f"the {side} selector of a text-to-image model must be {PROMPT_FORMS}; got {selector!r}")


def _read_prompt_file(path: Path, side: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{side} prompt file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{side} prompt file {path} is not UTF-8 text") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise DataError(f"{side} prompt file {path} holds no prompt (one per line)")
    return prompts


def parse_side(selector: Any, side: str, image_shape: tuple[int, int, int] | None = None) -> PromptSide:
    """Prompts (and images) of one side from its selector(s); see the module docstring."""
    prompts: list[str] = []
    image_dir: Path | None = None
    for item in _items(selector, side):
        head, _, body = item.partition(":")
        kind = head.strip().lower()
        if kind == "prompt":
            parts = body.split(";")
            if any(not p.strip() for p in parts):
                raise DataError(f"{side} selector {item!r} holds an empty prompt: give the text of a concept, "
                                "e.g. 'prompt:a handwritten digit zero'")
            prompts += [p.strip() for p in parts]
        elif kind == "prompts":
            prompts += _read_prompt_file(Path(body.strip()).expanduser(), side)
        elif kind == "images":
            if image_dir is not None:
                raise DataError(f"the {side} side names two image folders; give one images:DIR")
            image_dir = Path(body.strip()).expanduser()
            if not image_dir.is_dir():
                raise DataError(f"{side} image folder {image_dir} does not exist")
        elif kind == "class":
            raise DataError(f"{side} selector {item!r} names a class, but this is a text-to-image model: "
                            f"select by prompt instead ({PROMPT_FORMS})")
        else:
            raise DataError(f"unknown {side} selector {item!r}; a text-to-image model takes {PROMPT_FORMS}")
    prompts = list(dict.fromkeys(prompts))
    if image_dir is not None and not prompts:
        raise DataError(f"the {side} images need a prompt that names what they show: add prompt:TEXT")
    images, captions = None, None
    if image_dir is not None:
        from fastunlearn.data.sources import load_image_folder

        c, h, w = image_shape if image_shape is not None else (3, 512, 512)
        images, _ = load_image_folder(image_dir, size=h, channels=c)
        captions = [prompts[i % len(prompts)] for i in range(images.shape[0])]
    return PromptSide(prompts=prompts, images=images, image_prompts=captions, text=" + ".join(_items(selector, side)))


def concept_prompts(concepts: dict[str, Any] | None) -> dict[str, int]:
    """prompt → class for every prompt a model's recorded concepts name: ``template`` and each of ``paraphrases``
    (templates with ``{name}`` — the class name — and ``{numeral}``, or one positional ``{}``), per class."""
    if not concepts or not concepts.get("classes"):
        return {}
    out: dict[str, int] = {}
    templates = [concepts.get("template", "{}")] + list(concepts.get("paraphrases", []))
    numerals = concepts.get("numerals") or [None] * len(concepts["classes"])
    for c, (name, numeral) in enumerate(zip(concepts["classes"], numerals)):
        for t in templates:  # "{name}"/"{numeral}" fields, or one positional "{}" = the name
            out.setdefault(t.format(name, name=name, numeral=numeral if numeral is not None else name), c)
    return out


def fill(template: str, concepts: dict[str, Any], c: int) -> str:
    """``template`` (``{name}``, ``{numeral}`` or one positional ``{}``) filled with class ``c`` of ``concepts``."""
    numerals = concepts.get("numerals") or concepts["classes"]
    name = concepts["classes"][c]
    return template.format(name, name=name, numeral=numerals[c])


def class_prompt(concepts: dict[str, Any], c: int) -> str:
    """The canonical prompt of class ``c`` (the concepts' template)."""
    return fill(concepts.get("template", "{name}"), concepts, c)


def reported_paraphrases(concepts: dict[str, Any] | None, classes: Sequence[int], exclude: Sequence[str] = ()) -> list[str]:
    """The paraphrases of ``classes`` a run evaluates: ``concepts["reported_paraphrases"]`` (a few trained
    wordings and every held-out one) when the model records them, else all of its ``paraphrases``."""
    if not concepts or not classes:
        return []
    templates = concepts.get("reported_paraphrases") or concepts.get("paraphrases") or []
    out = [fill(t, concepts, c) for c in classes for t in templates]
    return [p for p in dict.fromkeys(out) if p not in set(exclude)]


def select_prompts(forget: Any, retain: Any, adapter: Any, default_retain: Sequence[str] | None = None) -> PromptSets:
    """The forget and retain prompt sets of a text-to-image job, checked against ``adapter`` (its tokenizer).

    Retain when not given: the model's other concepts, else ``default_retain`` (a method's shipped prompts, e.g.
    AdvUnlearn's everyday objects) without the forget prompts, else none."""
    f = parse_side(forget, "forget", adapter.image_shape)
    if not f.prompts:
        raise DataError(f"the forget selector names no prompt; give {PROMPT_FORMS}")
    concepts = getattr(adapter, "concepts", None)
    classes = concept_prompts(concepts)
    forget_classes = sorted({classes[p] for p in f.prompts if p in classes})
    if retain is None or retain == []:
        if concepts and concepts.get("classes"):
            kept = [c for c in range(len(concepts["classes"])) if c not in forget_classes]
            r = PromptSide(prompts=[class_prompt(concepts, c) for c in kept], text="the model's other concepts")
        elif default_retain:
            r = PromptSide(prompts=[p for p in default_retain if p not in set(f.prompts)],
                           text="the method's shipped retain prompts")
        else:
            r = PromptSide(prompts=[], text="none")
    else:
        r = parse_side(retain, "retain", adapter.image_shape)
    both = sorted(set(f.prompts) & set(r.prompts))
    if both:
        raise DataError(f"prompt {both[0]!r} is on both the forget and the retain side; a prompt is either forgotten or kept")
    for side, prompts in (("forget", f.prompts), ("retain", r.prompts)):
        for p in prompts:
            adapter.check_prompt(p, f"{side} prompt")
    description = f"forget {len(f.prompts)} prompt(s) [{'; '.join(f.prompts[:4])}{' …' if len(f.prompts) > 4 else ''}]" \
                  f"; retain {len(r.prompts)} prompt(s) ({r.text})"
    return PromptSets(forget=f, retain=r, description=description, concept_classes=classes,
                      forget_classes=forget_classes)


__all__ = ["PromptSets", "PromptSide", "select_prompts", "parse_side", "is_prompt_selector", "concept_prompts",
           "class_prompt", "fill", "reported_paraphrases", "PROMPT_FORMS"]
