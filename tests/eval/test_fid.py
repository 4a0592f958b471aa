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
    with pytest.raises(UserInputError, match="no such file"):
        evaluate_model(str(tiny_model_dir), inception_weights="/nonexistent/pt_inception.pth")
