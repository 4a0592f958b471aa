"""Prompt selectors of text-to-image jobs: parsing, defaults from the model's concepts, and every user mistake."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.data.prompts import concept_prompts, is_prompt_selector, select_prompts
from fastunlearn.errors import UserInputError


@pytest.fixture(scope="module")
def adapter():
    from fastunlearn.models import load_model
    from fastunlearn.models.tiny_sd import build_tiny_sd

    return load_model(build_tiny_sd())


DIGIT_CONCEPTS = {"classes": ["zero", "one", "two"], "numerals": ["0", "1", "2"],
                  "template": "a handwritten digit {name}", "paraphrases": ["the number {name}", "{numeral}"]}


def test_prompt_forms(adapter, tmp_path: Path):
    f = tmp_path / "p.txt"
    f.write_text("# a comment\n a red car \n\nthe sea, at night\n")
    sets = select_prompts(["prompt:a dog;a puppy", f"prompts:{f}"], "prompt:a cat", adapter)
    assert sets.forget_prompts == ["a dog", "a puppy", "a red car", "the sea, at night"]  # commas kept verbatim
    assert sets.retain_prompts == ["a cat"]
    assert is_prompt_selector("prompt:x") and is_prompt_selector(["prompt:x", "images:/d"])
    assert not is_prompt_selector("class:0") and not is_prompt_selector([1, 2])


def test_default_retain_is_the_other_concepts(adapter, monkeypatch):
    monkeypatch.setattr(adapter, "concepts", DIGIT_CONCEPTS)
    sets = select_prompts("prompt:a handwritten digit zero", None, adapter)
    assert sets.retain_prompts == ["a handwritten digit one", "a handwritten digit two"]
    assert sets.forget_classes == [0]
    assert concept_prompts(DIGIT_CONCEPTS)["1"] == 1 and concept_prompts(DIGIT_CONCEPTS)["the number two"] == 2
    # a paraphrase forgets the same class
    assert select_prompts("prompt:the number one", None, adapter).forget_classes == [1]


def test_no_concepts_no_default_retain(adapter):
    assert select_prompts("prompt:a dog", None, adapter).retain_prompts == []


@pytest.mark.parametrize("forget, retain, match", [
    ("prompt:", None, "empty prompt"),
    ("prompt:a dog;", None, "empty prompt"),
    ("prompt:a dog", "prompt:a dog", "on both the forget and the retain side"),
    ("class:0", None, "text-to-image model"),
    ("pics:/x", None, "unknown forget selector"),
    ("prompt:" + "y" * 40, None, "tokens long"),
    ("images:/does/not/exist", None, "does not exist"),
    ("prompts:/does/not/exist.txt", None, "does not exist"),
])
def test_bad_selectors(adapter, forget, retain, match):
    with pytest.raises(UserInputError, match=match):
        select_prompts(forget, retain, adapter)


def test_images_need_a_prompt_and_are_captioned(adapter, tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(d / f"{i}.png")
    with pytest.raises(UserInputError, match="need a prompt"):
        select_prompts(f"images:{d}", None, adapter)
    sets = select_prompts([f"images:{d}", "prompt:a dog;a hound"], None, adapter)
    side = sets.forget
    assert side.images.shape == (3, *adapter.image_shape)
    assert side.image_prompts == ["a dog", "a hound", "a dog"]
    assert torch.all(side.images >= -1) and torch.all(side.images <= 1)


def test_prompt_selector_on_a_ddpm_is_refused(tiny_model_dir, tmp_path: Path):
    import fastunlearn

    with pytest.raises(UserInputError, match="names prompts"):
        fastunlearn.run(model=str(tiny_model_dir), forget="prompt:a dog", steps=1, out_dir=str(tmp_path / "o"),
                        evaluate=False, progress=False)
