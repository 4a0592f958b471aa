"""The second digits judge (an RBF SVM re-implemented in torch) against scikit-learn fitted here, independently."""
import json

import numpy as np
import pytest
import torch
from sklearn.svm import SVC

from fastunlearn import zoo
from fastunlearn.data.digits import load_digits_split
from fastunlearn.errors import UserInputError
from fastunlearn.eval.judges import load_judge
from fastunlearn.zoo.svm import DigitsSVM
from fastunlearn.zoo.train import CONFIGS, SVMTrainConfig, config_to_json


def _flat(images: torch.Tensor) -> np.ndarray:
    return images.reshape(images.shape[0], -1).double().numpy()


@pytest.fixture(scope="module")
def shipped():
    return load_judge("zoo:digits-svm")


@pytest.fixture(scope="module")
def sklearn_svc():
    """scikit-learn's SVC fitted on the train split with the recorded C and γ (what the zoo claims to ship)."""
    chosen = json.loads((zoo.resolve("digits-svm") / "training.json").read_text())["chosen"]
    train = load_digits_split("train")
    return SVC(kernel="rbf", C=chosen["C"], gamma=chosen["gamma"], break_ties=True).fit(
        _flat(train.images), train.labels.numpy())


def _probe_images() -> torch.Tensor:
    """Test digits, noisy and shifted ones, pure noise and constant fills: inputs far from the data too."""
    test = load_digits_split("test").images
    gen = torch.Generator().manual_seed(0)
    noisy = (test + 0.4 * torch.randn(test.shape, generator=gen)).clamp(-1, 1)
    shifted = torch.roll(test, shifts=(1, 2), dims=(2, 3))
    noise = torch.rand(64, 1, 16, 16, generator=gen) * 2 - 1
    fills = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 1, 16, 16)
    return torch.cat([test, noisy, shifted, noise, fills])


def test_predict_equals_sklearn_on_test_split(shipped, sklearn_svc):
    test = load_digits_split("test")
    ours = shipped.predict(test.images).numpy()
    assert (ours == sklearn_svc.predict(_flat(test.images))).all()
    assert (ours == test.labels.numpy()).mean() >= 0.97


def test_scores_equal_sklearn_decision_function(shipped, sklearn_svc):
    x = _probe_images()
    flat = _flat(x)
    assert (shipped.predict(x).numpy() == sklearn_svc.predict(flat)).all()
    np.testing.assert_allclose(shipped(x).double().numpy(), sklearn_svc.decision_function(flat), rtol=0, atol=1e-5)
    sklearn_svc.decision_function_shape = "ovo"
    try:
        ovo = sklearn_svc.decision_function(flat)
    finally:
        sklearn_svc.decision_function_shape = "ovr"
    np.testing.assert_allclose(shipped.decision_pairs(x).numpy(), ovo, rtol=0, atol=1e-9)


def test_from_sklearn_roundtrip_and_tie_votes(tmp_path):
    """A small SVM whose vote ties are common (4 classes, few points): break_ties's argmax is reproduced."""
    gen = np.random.default_rng(0)
    x = gen.uniform(-1, 1, size=(40, 1, 4, 4)).astype(np.float32)
    y = np.arange(40) % 4
    svc = SVC(kernel="rbf", C=0.5, gamma=0.3, break_ties=True).fit(x.reshape(40, -1).astype(np.float64), y)
    model = DigitsSVM.from_sklearn(svc, image_shape=(1, 4, 4))
    model.save_pretrained(tmp_path)
    again = DigitsSVM.from_pretrained(tmp_path)
    probe = torch.as_tensor(gen.uniform(-1, 1, size=(300, 1, 4, 4)).astype(np.float32))
    want = svc.predict(_flat(probe))
    assert (again.predict(probe).numpy() == want).all()
    assert (model.predict(probe).numpy() == want).all()


def test_wrong_shape_is_a_user_error(shipped):
    with pytest.raises(UserInputError, match=r"shape \[N, 1, 16, 16\]"):
        shipped(torch.zeros(2, 3, 16, 16))


def test_unknown_judge_lists_the_judges():
    with pytest.raises(UserInputError, match="zoo:digits-classifier, zoo:digits-svm"):
        load_judge("zoo:nope")
    assert isinstance(load_judge("digits-classifier"), torch.nn.Module)


def test_recorded_svm_config_and_quality():
    record = json.loads((zoo.resolve("digits-svm") / "training.json").read_text())
    assert record["config"] == config_to_json(CONFIGS["digits-svm"]) == config_to_json(SVMTrainConfig())
    q = record["quality"]
    assert q["test_accuracy"] >= 0.97 and q["test_agreement_with_sklearn_predict"] == 1.0
    assert record["chosen"]["C"] in SVMTrainConfig().c_grid


def test_svm_fitting_path_runs(tmp_path):
    """The real fitting function on a one-point grid (a second or so)."""
    from dataclasses import replace

    from fastunlearn.zoo.train import train_svm

    record = train_svm(replace(SVMTrainConfig(), c_grid=(3.0,), gamma_grid=(0.02,), cv_folds=2), tmp_path)
    assert record["chosen"] == {"C": 3.0, "gamma": 0.02}
    assert record["quality"]["test_agreement_with_sklearn_predict"] == 1.0
    assert DigitsSVM.from_pretrained(tmp_path).num_classes == 10


def test_judge_works_in_generation_accuracy(shipped):
    """The SVM as generation_accuracy's judge, on a 'sampler' that returns real test digits of the asked class."""
    from fastunlearn.eval.classifier import generation_accuracy

    test = load_digits_split("test")
    by_class = {c: test.images[test.labels == c][:10] for c in range(10)}
    wrong = {c: by_class[(c + 1) % 10] for c in range(10)}

    def sample_fn(n, labels):
        return torch.stack([by_class[int(c)][i % 10] for i, c in enumerate(labels)])

    def wrong_fn(n, labels):
        return torch.stack([wrong[int(c)][i % 10] for i, c in enumerate(labels)])

    assert generation_accuracy(sample_fn, shipped, range(10), 10)["mean_accuracy"] >= 0.95
    assert generation_accuracy(wrong_fn, shipped, range(10), 10)["mean_accuracy"] <= 0.05
