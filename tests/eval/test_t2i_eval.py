"""The text-to-image evaluation (fastunlearn.eval.t2i), its nudity rate, per-prompt grids and report.

The tiny offline Stable Diffusion pipeline generates noise-like 3×16×16 images; fixed random linear layers
over them are real (if meaningless) classifiers, so every count below is recomputed independently from the
adapter's own generations with plain ``judge(images).argmax``.
"""
from __future__ import annotations

import io
import sys
from base64 import b64decode
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.errors import UserInputError
from fastunlearn.eval.evaluate import format_table
from fastunlearn.eval.grids import save_before_after_prompt_grid
from fastunlearn.eval.nudity import load_detector, nudity_rate
from fastunlearn.eval.report import render_report
from fastunlearn.eval.stats import wilson_interval
from fastunlearn.eval.t2i import concept_prompt_classes, evaluate_t2i, t2i_judges
from fastunlearn.models.t2i import DEFAULT_GUIDANCE, from_pipeline
from fastunlearn.models.tiny_sd import build_tiny_sd

FORGET, RETAIN, PARA = ["a dog"], ["a cat", "a red car"], ["a puppy", "the dog"]
PER, STEPS = 6, 2


def _cfg(**kw):
    return SimpleNamespace(**{"eval_per_class": PER, "eval_steps": STEPS, "eval_seed": 7, "guidance": None, **kw})


def _linear_judge(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10)).eval()


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only waits on a loaded 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def adapter():
    return from_pipeline(build_tiny_sd())


@pytest.fixture(scope="module")
def edited():
    """The same tiny SD with its UNet weights nudged (an 'unlearned' model that is still close to the base)."""
    ad = from_pipeline(build_tiny_sd())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ad.unet.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g))
    return ad


@pytest.fixture(scope="module")
def panel():
    return {"": _linear_judge(0), "svm": _linear_judge(1)}


def _seed(group_index, index, eval_seed=7):
    """The documented seed rule, written out: SeedSequence([eval_seed, group, index]), first 63 bits."""
    hi, lo = np.random.SeedSequence([eval_seed, group_index, index]).generate_state(2, np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def _replay(adapter, groups=((0, FORGET), (1, RETAIN), (2, PARA))):
    return {p: adapter.generate(PER, [p], steps=STEPS, generator=torch.Generator().manual_seed(_seed(g, i)),
                                guidance_scale=DEFAULT_GUIDANCE)
            for g, prompts in groups for i, p in enumerate(prompts)}


def test_majority_classes_and_shares_match_an_independent_count(adapter, panel):
    out = evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, panel, paraphrases=PARA)
    assert out["kind"] == "t2i"
    keys = ["forget_accuracy", "retain_accuracy", "paraphrase_forget_share"]
    assert out["headline"] == keys + [k + "_svm" for k in keys] and out["means"] == []
    assert out["n"] == {k + s: n for s in ("", "_svm") for k, n in zip(keys, (PER, 2 * PER, 2 * PER))}
    assert list(out["images"]) == FORGET + RETAIN + PARA
    images = _replay(adapter)
    first = {p: panel[""](x).argmax(1) for p, x in images.items()}
    second = {p: panel["svm"](x).argmax(1) for p, x in images.items()}
    cls = {p: int(np.argmax(np.bincount(first[p].numpy(), minlength=10))) for p in FORGET + RETAIN}
    assert out["detail"]["concept_classes"] == cls and out["detail"]["forget_classes"] == [cls["a dog"]]
    for suffix, preds in (("", first), ("_svm", second)):
        forget = float((preds["a dog"] == cls["a dog"]).float().mean())
        retain = np.mean([float((preds[p] == cls[p]).float().mean()) for p in RETAIN])
        para = float(torch.cat([preds[p] for p in PARA]).eq(cls["a dog"]).float().mean())
        assert out["forget_accuracy" + suffix] == pytest.approx(forget)
        assert out["retain_accuracy" + suffix] == pytest.approx(retain)
        assert out["paraphrase_forget_share" + suffix] == pytest.approx(para)
        k = round(para * 2 * PER)
        assert out["ci95"]["paraphrase_forget_share" + suffix] == pytest.approx(list(wilson_interval(k, 2 * PER)))
    assert out["forget_accuracy"] > 0  # the majority class is drawn at least once
    for p in PARA:
        assert out["detail"]["paraphrase_share"][p] == pytest.approx(float((first[p] == cls["a dog"]).float().mean()))
        assert out["detail"]["by_prompt"][p]["predicted_counts"] == torch.bincount(first[p], minlength=10).tolist()
    # the images are the generations of the documented per-prompt seeds, first 8 (here all 6) per prompt
    for p, x in images.items():
        assert torch.equal(out["images"][p], x[:8])
    assert "fid" not in out and out["judges"][""] == "Sequential" and set(out["judges"]) == {"", "svm"}


def test_given_classes_and_the_before_mapping_carried_to_after(adapter, edited, panel):
    given = {"a dog": 2, "a cat": 5, "a red car": 7, "a puppy": 4}  # "the dog" is judged against F = {2}
    out = evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, panel[""], concept_classes=given, paraphrases=PARA)
    preds = {p: panel[""](x).argmax(1) for p, x in _replay(adapter).items()}
    assert out["detail"]["class_source"] == "given"
    assert out["forget_accuracy"] == pytest.approx(float((preds["a dog"] == 2).float().mean()))
    assert out["retain_accuracy"] == pytest.approx(
        (float((preds["a cat"] == 5).float().mean()) + float((preds["a red car"] == 7).float().mean())) / 2)
    assert out["paraphrase_forget_share"] == pytest.approx(
        (float((preds["a puppy"] == 4).sum()) + float((preds["the dog"] == 2).sum())) / (2 * PER))
    # majority before, carried to after: the after model is scored against the before model's classes
    before = evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, panel[""])
    after = evaluate_t2i(edited, _cfg(), FORGET, RETAIN, panel[""], concept_classes=before["detail"]["concept_classes"])
    assert after["detail"]["concept_classes"] == before["detail"]["concept_classes"]
    preds_after = panel[""](_replay(edited, ((0, FORGET),))["a dog"]).argmax(1)
    assert after["forget_accuracy"] == pytest.approx(
        float((preds_after == before["detail"]["concept_classes"]["a dog"]).float().mean()))


def test_same_config_same_images_and_rows_comparable_before_after(adapter, edited, panel):
    a = evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, panel, paraphrases=PARA)
    b = evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, panel, paraphrases=PARA)
    assert all(torch.equal(a["images"][p], b["images"][p]) for p in a["images"])
    assert {k: a[k] for k in a["headline"]} == {k: b[k] for k in b["headline"]}
    # a prompt's noise depends only on the seed and its place in its own list
    more = evaluate_t2i(adapter, _cfg(), FORGET, RETAIN + ["a boat"], panel, paraphrases=PARA)
    assert all(torch.equal(a["images"][p], more["images"][p]) for p in FORGET + RETAIN + PARA)
    other_seed = evaluate_t2i(adapter, _cfg(eval_seed=8), FORGET, RETAIN, panel)
    assert not torch.equal(a["images"]["a dog"], other_seed["images"]["a dog"])
    # before/after: each after image is the same draw as the before image in its row
    after = evaluate_t2i(edited, _cfg(), FORGET, RETAIN, panel, paraphrases=PARA)
    for p in FORGET + RETAIN + PARA:
        x, y = a["images"][p], after["images"][p]
        same_row = (x - y).pow(2).mean()
        other_row = (x - y.roll(1, dims=0)).pow(2).mean()
        assert 0 < same_row < 0.25 * other_row, (p, float(same_row), float(other_row))


def test_digits_panel_on_grey_three_channel_generations_with_fid():
    """A stand-in for zoo:digits-t2i that 'draws' held-out test digits (three equal channels) for each prompt,
    the erased digit drawn as a six: the real digits judges and FID of the retained classes."""
    from fastunlearn.data.digits import load_digits_split

    test = load_digits_split("test")
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    concepts = {"classes": names, "template": "a handwritten digit {}", "paraphrases": ["the number {}"]}
    classes = concept_prompt_classes(concepts)
    assert classes["a handwritten digit seven"] == 7 and classes["the number zero"] == 0 and len(classes) == 20

    class Model:
        image_shape, num_classes, device = (3, 16, 16), 10, torch.device("cpu")

        def __init__(self, swap):
            self.concepts, self.swap = concepts, swap

        def generate(self, n, class_labels, steps, generator, guidance_scale):
            c = self.swap.get(classes[class_labels[0]], classes[class_labels[0]])
            pool = test.images[test.labels == c]
            return pool[torch.randint(0, pool.shape[0], (n,), generator=generator)].expand(-1, 3, -1, -1)

    panel = t2i_judges(Model({}))
    assert set(panel) == {"", "svm"}
    forget = ["a handwritten digit zero"]
    retain = [f"a handwritten digit {w}" for w in names[1:4]]
    cfg = _cfg(eval_per_class=12)
    before = evaluate_t2i(Model({}), cfg, forget, retain, panel, classes, paraphrases=["the number zero"])
    after = evaluate_t2i(Model({0: 6}), cfg, forget, retain, panel, classes, paraphrases=["the number zero"])
    assert before["forget_accuracy"] > 0.9 and before["paraphrase_forget_share"] > 0.9
    assert after["forget_accuracy"] == 0 and after["paraphrase_forget_share"] == 0
    assert after["forget_accuracy_svm"] == 0 and before["retain_accuracy_svm"] > 0.8
    assert before["retain_accuracy"] == after["retain_accuracy"] > 0.9  # same seeds, same retained draws
    assert before["fid"]["classes"] == [1, 2, 3] and before["fid"]["overall"]["n_fake"] == 36
    assert before["judges"] == {"": "zoo:digits-classifier", "svm": "zoo:digits-svm"}
    assert t2i_judges(from_pipeline(build_tiny_sd())) is None  # no concepts: no digits judges


class BrightCornerDetector:
    """Reads the PNG it is given, as NudeNet does; 'exposed' when its top-left quadrant is bright. Also reports
    what must never count: a face, a covered part, and an exposed part at or below the 0.45 threshold."""

    def __init__(self):
        self.paths = []

    def detect(self, path):
        self.paths.append(path)
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        h, w = arr.shape[:2]
        found = [{"class": "FACE_FEMALE", "score": 0.99, "box": [0, 0, w, h]},
                 {"class": "FEMALE_BREAST_COVERED", "score": 0.95, "box": [0, 0, 2, 2]},
                 {"class": "BELLY_EXPOSED", "score": 0.45, "box": [0, 0, 2, 2]}]
        if arr[: h // 2, : w // 2].mean() > 127.5:
            found.append({"class": "FEMALE_BREAST_EXPOSED", "score": 0.8, "box": [0, 0, w // 2, h // 2]})
        return found


def _bright_corner(images):
    u8 = ((images.clamp(-1, 1) + 1) * 127.5).round()
    return u8[:, :, :8, :8].mean(dim=(1, 2, 3)) > 127.5


def test_nudity_rate_counts_exposed_classes_above_the_threshold(monkeypatch):
    images = -torch.ones(5, 3, 16, 16)
    images[[1, 3], :, :8, :8] = 1.0
    det = BrightCornerDetector()
    res = nudity_rate(images, det)
    assert res["rate"] == pytest.approx(0.4) and res["nude"] == 2 and res["n"] == 5
    assert res["classes"] == {"FEMALE_BREAST_EXPOSED": 2} and len(set(det.paths)) == 5
    monkeypatch.setitem(sys.modules, "nudenet", None)  # not installed
    with pytest.raises(UserInputError, match=r"pip install fastunlearn\[nudity\]"):
        load_detector()


def test_clip_and_nudity_without_a_judge(adapter):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from fastunlearn.eval.clip_score import ClipScorer

    torch.manual_seed(0)
    tok = adapter.tokenizer
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2), projection_dim=8))
    scorer = ClipScorer(model, tok, CLIPImageProcessor(size={"shortest_edge": 16},
                                                       crop_size={"height": 16, "width": 16}), reference="tiny")
    out = evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, None, paraphrases=PARA, clip=scorer,
                       nudity=BrightCornerDetector())
    assert out["headline"] == ["nudity_rate", "paraphrase_nudity_rate", "clip_score_forget", "clip_score_retain"]
    assert out["means"] == ["clip_score_forget", "clip_score_retain"] and out["judges"] == {}
    images = _replay(adapter)
    forget_scores = scorer.scores(images["a dog"], "a dog")
    retain_scores = torch.cat([scorer.scores(images[p], p) for p in RETAIN])
    assert out["clip_score_forget"] == pytest.approx(float(forget_scores.mean()), abs=1e-4)
    assert out["clip_score_retain"] == pytest.approx(float(retain_scores.mean()), abs=1e-4)
    half = 1.959963984540054 * float(retain_scores.std()) / (2 * PER) ** 0.5
    assert out["ci95"]["clip_score_retain"] == pytest.approx([float(retain_scores.mean()) - half,
                                                              float(retain_scores.mean()) + half], abs=1e-4)
    assert out["n"]["clip_score_retain"] == 2 * PER
    assert out["nudity_rate"] == pytest.approx(float(_bright_corner(images["a dog"]).float().mean()))
    para = torch.cat([_bright_corner(images[p]) for p in PARA])
    assert out["paraphrase_nudity_rate"] == pytest.approx(float(para.float().mean()))
    assert 0 < float(torch.cat([_bright_corner(x) for x in images.values()]).float().mean()) < 1  # both cases occur
    table = format_table(out, out)
    assert "clip_score_forget" in table and f"{out['clip_score_forget']:.2f} [" in table


def test_bad_inputs(adapter, panel):
    with pytest.raises(UserInputError, match="as a forget prompt and as a retain prompt"):
        evaluate_t2i(adapter, _cfg(), FORGET, FORGET + RETAIN, panel)
    with pytest.raises(UserInputError, match="at least one forget prompt"):
        evaluate_t2i(adapter, _cfg(), [], RETAIN, panel)
    with pytest.raises(UserInputError, match="empty"):
        evaluate_t2i(adapter, _cfg(), ["  "], RETAIN, panel)
    with pytest.raises(UserInputError, match=r"no class for the prompts \['a red car'\]"):
        evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, panel, concept_classes={"a dog": 0, "a cat": 1})
    with pytest.raises(UserInputError, match="outside the judge's classes 0–9"):
        evaluate_t2i(adapter, _cfg(), FORGET, RETAIN, panel, concept_classes={"a dog": 0, "a cat": 1, "a red car": 12})


def test_prompt_grid_puts_before_left_and_after_right(tmp_path):
    blue, red = torch.tensor([-1.0, -1.0, 1.0]), torch.tensor([1.0, -1.0, -1.0])
    before = {"a dog": blue.view(1, 3, 1, 1).expand(8, 3, 16, 16), "a cat": blue.view(1, 3, 1, 1).expand(3, 3, 16, 16)}
    after = {p: red.view(1, 3, 1, 1).expand(x.shape[0], 3, 16, 16) for p, x in before.items()}
    path = save_before_after_prompt_grid(before, after, tmp_path / "g.png", title="prompt:a dog")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).astype(int)
    left, right = arr[:, : arr.shape[1] // 2], arr[:, arr.shape[1] // 2:]
    count = lambda a, rgb: int((a == rgb).all(-1).sum())  # noqa: E731  (tiles only: the text is grey)
    tiles = 11 * 64 * 64  # 8 + 3 images per side, 16 px upscaled 4×
    assert count(left, (0, 0, 255)) == tiles and count(right, (255, 0, 0)) == tiles
    assert count(left, (255, 0, 0)) == 0 and count(right, (0, 0, 255)) == 0


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_report_shows_per_prompt_grids_and_escapes_prompts(adapter, edited, panel):
    nasty = "<b>cats</b> & 'dogs'"
    before = evaluate_t2i(adapter, _cfg(), FORGET, [nasty, "a red car"], panel, paraphrases=PARA)
    after = evaluate_t2i(edited, _cfg(), FORGET, [nasty, "a red car"], panel,
                         concept_classes=before["detail"]["concept_classes"], paraphrases=PARA)
    html = render_report(config={"model": "tiny"}, metrics_before=before, metrics_after=after, history=[],
                         images_before=before["images"], images_after=after["images"],
                         headline={"forgotten": "prompt:a dog", "method": "esd"})
    assert "<b>cats" not in html and "&lt;b&gt;cats&lt;/b&gt; &amp; &#x27;dogs&#x27;" in html
    parser = _Collect()
    parser.feed(html)
    parser.close()
    prompts = FORGET + [nasty, "a red car"] + PARA
    assert [i["alt"] for i in parser.images] == [f"{p} {w}" for p in prompts for w in ("before", "after")]
    for img in parser.images:  # every strip decodes
        Image.open(io.BytesIO(b64decode(img["src"].split(",", 1)[1]))).load()
    # the before strip holds the before images, the after strip the after ones
    black = {p: -torch.ones(4, 3, 16, 16) for p in prompts}
    white = {p: torch.ones(4, 3, 16, 16) for p in prompts}
    swapped = _Collect()
    swapped.feed(render_report(config={}, metrics_before=before, metrics_after=after, history=[],
                               images_before=black, images_after=white, headline={}))
    for img in swapped.images:
        arr = np.asarray(Image.open(io.BytesIO(b64decode(img["src"].split(",", 1)[1]))).convert("L"))
        assert arr[0, 0] == (0 if img["alt"].endswith("before") else 255), img["alt"]
    text = " ".join(parser.text)
    for needle in ("Samples before and after, per prompt", "paraphrases: forgotten-class share", "Per prompt",
                   "erased", "paraphrase of the erased", "majority of the first judge"):
        assert needle in text, needle
    assert "Per class" not in text
