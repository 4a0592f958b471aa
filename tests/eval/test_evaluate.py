"""The run's evaluation (fastunlearn.eval.evaluate): both judges score the same generations, with counts."""
from types import SimpleNamespace

import pytest
import torch

from fastunlearn.data.digits import load_digits_split
from fastunlearn.eval.evaluate import digits_judges, evaluate, format_table


class FakeDigitsModel:
    """'Generates' held-out test digits of the asked class; asked for ``swap``'s keys it draws their values'
    digits instead (an unlearned class drawn as another); unconditionally, digits of every class in turn."""

    image_shape, num_classes, device = (1, 16, 16), 10, torch.device("cpu")

    def __init__(self, swap=None, shift=0):
        test = load_digits_split("test")
        # shifted digits: the CNN (trained with shifts) and the pixel SVM (not) disagree on some of them
        images = torch.roll(test.images, shifts=(shift, shift), dims=(2, 3))
        self.by_class = {c: images[test.labels == c] for c in range(10)}
        self.swap = swap or {}
        self.drawn = []

    def generate(self, n, class_labels=None, steps=None, generator=None):
        labels = class_labels.tolist() if class_labels is not None else [i % 10 for i in range(n)]
        imgs = []
        for i, c in enumerate(labels):
            pool = self.by_class[self.swap.get(c, c)]
            imgs.append(pool[(len(self.drawn) + i) % pool.shape[0]])
        self.drawn += labels
        return torch.stack(imgs)


@pytest.fixture(scope="module")
def panel():
    return digits_judges(FakeDigitsModel())


def _cfg(**kw):
    return SimpleNamespace(**{"eval_seed": 0, "eval_steps": 1, "eval_per_class": 6, "eval_unconditional": 40,
                              "unconditional": False, **kw})


def test_both_judges_score_the_same_generations(panel):
    model = FakeDigitsModel(swap={0: 6}, shift=2)
    out = evaluate(model, _cfg(), [0], panel)
    assert out["headline"] == ["forget_accuracy", "retain_accuracy", "forget_accuracy_svm", "retain_accuracy_svm"]
    assert out["n"] == {"forget_accuracy": 6, "retain_accuracy": 54, "forget_accuracy_svm": 6, "retain_accuracy_svm": 54}
    assert out["judges"] == {"": "zoo:digits-classifier", "svm": "zoo:digits-svm"}
    # Recompute from the images the model returned, judge by judge.
    replay = FakeDigitsModel(swap={0: 6}, shift=2)
    labels = torch.arange(10).repeat_interleave(6)
    images = replay.generate(60, labels)
    for suffix, judge in (("", panel[""]), ("_svm", panel["svm"])):
        pred = judge(images).argmax(dim=1)
        assert out["forget_accuracy" + suffix] == pytest.approx(float((pred[:6] == 0).float().mean()))
        assert out["retain_accuracy" + suffix] == pytest.approx(float((pred[6:] == labels[6:]).float().mean()))
    assert out["forget_accuracy"] == out["forget_accuracy_svm"] == 0.0
    assert out["retain_accuracy"] > 0.8 and out["retain_accuracy_svm"] < out["retain_accuracy"] - 0.1
    lo, hi = out["ci95"]["forget_accuracy"]
    assert lo == 0.0 and 0.3 < hi < 0.45  # 0 of 6: Wilson [0, 0.39]
    assert set(out["fid"]["classes"]) == set(range(1, 10)) and "mia" not in out
    assert out["detail"]["also"]["svm"]["accuracy_by_class"][0] == 0.0


def test_unconditional_share_by_both_judges(panel):
    out = evaluate(FakeDigitsModel(), _cfg(unconditional=True), [3], panel)
    assert out["headline"] == ["forget_share", "forget_share_svm"]
    assert out["forget_share"] == pytest.approx(0.1) and out["forget_share_svm"] == pytest.approx(0.1)
    assert out["n"]["forget_share_svm"] == 40


def test_one_judge_still_works(panel):
    out = evaluate(FakeDigitsModel(), _cfg(eval_per_class=3), [0], panel[""])
    assert out["headline"] == ["forget_accuracy", "retain_accuracy"] and "retain_accuracy_svm" not in out


def test_table_shows_intervals_counts_and_both_judges():
    before = {"forget_accuracy": 1.0, "retain_accuracy": 0.978, "forget_accuracy_svm": 1.0,
              "retain_accuracy_svm": 0.961, "headline": ["forget_accuracy", "retain_accuracy",
                                                         "forget_accuracy_svm", "retain_accuracy_svm"],
              "n": {"forget_accuracy": 100, "retain_accuracy": 900, "forget_accuracy_svm": 100,
                    "retain_accuracy_svm": 900},
              "judges": {"": "zoo:digits-classifier", "svm": "zoo:digits-svm"}}
    after = {**before, "forget_accuracy": 0.02, "retain_accuracy": 0.962, "forget_accuracy_svm": 0.0,
             "retain_accuracy_svm": 0.94}
    lines = format_table(before, after).splitlines()
    assert lines[0].split() == ["metric", "before", "after"]
    assert lines[1].split() == ["forget_accuracy", "100.0%", "[96.3–100.0]", "n=100", "2.0%", "[0.6–7.0]", "n=100"]
    assert lines[4].startswith("retain_accuracy_svm") and "n=900" in lines[4] and "94.0%" in lines[4]
    assert "zoo:digits-svm" in lines[-1]
    # a metrics dict from before counts were recorded still prints
    old = {"forget_accuracy": 1.0, "retain_accuracy": 0.9, "headline": ["forget_accuracy", "retain_accuracy"]}
    assert format_table(old, old).splitlines()[1].split() == ["forget_accuracy", "100.0%", "100.0%"]
