"""FID/KID in the digits judge's feature space, through torchmetrics."""
from __future__ import annotations

import pytest
import torch

from fastunlearn.errors import UserInputError
from fastunlearn.eval.fid import digits_real_by_class, fid_kid, per_class_fid


@pytest.fixture(scope="module")
def judge():
    from fastunlearn.zoo import load_classifier

    return load_classifier()


@pytest.fixture(scope="module")
def real():
    return digits_real_by_class("test", classes=[1, 3])


def test_self_distance_is_zero_and_noise_is_far(judge, real):
    same = fid_kid(real[3], real[3], judge, kid_subsets=20)
    noise = fid_kid(real[3], torch.rand(40, 1, 16, 16) * 2 - 1, judge, kid_subsets=20)
    other = fid_kid(real[3], real[1], judge, kid_subsets=20)
    assert abs(same["fid"]) < 1e-2
    assert noise["fid"] > 100 and other["fid"] > 100
    assert abs(same["kid_mean"]) < 0.05 * noise["kid_mean"]
    assert same["n_real"] == same["n_fake"] == real[3].shape[0]
    assert same["feature_space"] == "judge:DigitsClassifier"


def test_kid_reproducible_with_seed(judge, real):
    a = fid_kid(real[3], real[1], judge, kid_subsets=10, seed=3)
    b = fid_kid(real[3], real[1], judge, kid_subsets=10, seed=3)
    assert a == b


def test_torchmetrics_path_is_used(judge, real, monkeypatch):
    import torchmetrics.image.fid as tm_fid

    calls = []
    original = tm_fid.FrechetInceptionDistance.compute

    def spy(self):
        calls.append(type(self.inception).__name__)
        return original(self)

    monkeypatch.setattr(tm_fid.FrechetInceptionDistance, "compute", spy)
    fid_kid(real[3], real[1], judge, kid_subsets=5)
    assert calls == ["JudgeFeatures"]


def test_per_class_and_overall(judge):
    train = digits_real_by_class("train", classes=[1, 3])
    test = digits_real_by_class("test", classes=[1, 3])
    res = per_class_fid(test, train, judge, kid_subsets=5)
    assert res["classes"] == [1, 3] and set(res["by_class"]) == {1, 3}
    assert res["overall"]["n_real"] == test[1].shape[0] + test[3].shape[0]
    assert all(v["fid"] < 100 for v in res["by_class"].values())  # same classes, other split: close


def test_inception_needs_a_local_file(judge, real, tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        fid_kid(real[3], real[1], judge, inception_weights=tmp_path / "missing.pth")


def test_eval_command_on_a_tiny_model(tiny_model_dir):
    from fastunlearn.cli_eval import evaluate_model, format_eval

    threads = torch.get_num_threads()
    res = evaluate_model(str(tiny_model_dir), forget="class:0", eval_per_class=3, eval_steps=2, device="cpu")
    assert torch.get_num_threads() == threads  # the small-model 1-thread rule is undone afterwards
    assert res["forget_classes"] == [0] and 0 <= res["forget_accuracy"] <= 1
    assert res["fid"]["classes"] == list(range(1, 10)) and res["fid"]["overall"]["n_fake"] == 27
    assert res["mia"]["n_members"] > 100 and 0 <= res["mia"]["auc"] <= 1
    table = format_eval(res)
    assert "forget accuracy" in table and "FID (retained)" in table and "membership AUC" in table
    assert 0 <= res["retain_accuracy_svm"] <= 1 and res["n"]["retain_accuracy_svm"] == 27
    assert "retain accuracy (SVM)" in table and "n=27" in table and "SVM acc" in table
    with pytest.raises(UserInputError, match="no such file"):
        evaluate_model(str(tiny_model_dir), inception_weights="/nonexistent/pt_inception.pth")


class _Scaled(torch.nn.Module):
    """The digits judge with its features multiplied by ``scale`` (same directions, another norm)."""

    def __init__(self, judge, scale):
        super().__init__()
        self.judge, self.scale = judge, scale

    def features(self, x):
        return self.judge.features(x) * self.scale


def _plain_kid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased MMD² with (xᵀy + 1)³ on L2-normalised features, written out in float64 (independent of torchmetrics)."""
    a = a.double() / a.double().norm(dim=1, keepdim=True)
    b = b.double() / b.double().norm(dim=1, keepdim=True)
    m = a.shape[0]
    kxx, kyy, kxy = (a @ a.T + 1) ** 3, (b @ b.T + 1) ** 3, (a @ b.T + 1) ** 3
    off = lambda k: (k.sum() - k.diagonal().sum()) / (m * (m - 1))  # noqa: E731
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def test_kid_equals_plain_formula_on_unit_features(judge, real):
    """Equal set sizes and subset size = n: every subset is the whole set, so KID is one exact number."""
    n = min(real[1].shape[0], real[3].shape[0])
    a, b = real[3][:n], real[1][:n]
    res = fid_kid(a, b, judge, kid_subsets=3, kid_subset_size=n)
    with torch.no_grad():
        want = _plain_kid(judge.features(a), judge.features(b))
    assert res["kid_mean"] == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert res["kid_std"] == pytest.approx(0.0, abs=1e-6) and res["kid_subset_size"] == n


def test_kid_does_not_depend_on_the_feature_scale(judge, real):
    """Fails on the paper's (aᵀb/d + 1)³ on raw features, where KID grew with the feature norm."""
    base = fid_kid(real[3], real[1], judge, kid_subsets=20, seed=1)
    scaled = fid_kid(real[3], real[1], _Scaled(judge, 30.0), kid_subsets=20, seed=1)
    assert scaled["kid_mean"] == pytest.approx(base["kid_mean"], rel=1e-4)
    assert scaled["kid_std"] == pytest.approx(base["kid_std"], rel=1e-3)


def test_kid_near_zero_for_one_distribution_positive_for_two(judge):
    """Random halves of one class's digits: KID ≈ 0, scattered on both sides of it (its expectation is 0 and
    never far below); against another class: ~9 (two orders of magnitude above that scatter); a set against
    itself: ≈ 0 (slightly below: −2·(mean k(x, x) − mean k(x, x')) / n with the unbiased estimator)."""
    train = digits_real_by_class("train", classes=[1, 3])
    within, itself = [], None
    for seed in range(5):
        ones = train[1][torch.randperm(train[1].shape[0], generator=torch.Generator().manual_seed(seed))]
        half = ones.shape[0] // 2
        within.append(fid_kid(ones[:half], ones[half : 2 * half], judge, kid_subsets=2, kid_subset_size=half)["kid_mean"])
        if itself is None:
            itself = fid_kid(ones[:half], ones[:half], judge, kid_subsets=2, kid_subset_size=half)["kid_mean"]
            other = fid_kid(ones[:half], train[3][:half], judge, kid_subsets=2, kid_subset_size=half)["kid_mean"]
    assert other > 1.0
    assert max(abs(k) for k in within) < 0.01 * other and abs(itself) < 0.01 * other
    assert sum(within) / len(within) > -0.005 * other  # no systematic negative bias
