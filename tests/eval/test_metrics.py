import pytest
import torch

from fastunlearn.eval.classifier import generation_accuracy, unconditional_class_share
from fastunlearn.models.sampling import ddim_sample


class MeanJudge(torch.nn.Module):
    """Classifies by mean brightness into 3 bins: deterministic and trivially checkable."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-(m + 0.5).abs(), -m.abs(), -(m - 0.5).abs()], dim=1) * 10


def test_generation_accuracy_counts_with_fake_sampler():
    calls = []

    def sample_fn(n, class_labels):
        calls.append(n)
        # class c → brightness (c - 1) / 2, except class 2 draws class-0 images
        means = (class_labels.clamp(max=1).float() - 1) / 2
        means[class_labels == 2] = -0.5
        return means.view(-1, 1, 1, 1).expand(n, 1, 4, 4).clone()

    res = generation_accuracy(sample_fn, MeanJudge(), [0, 1, 2], n_per_class=5, batch_size=4)
    assert sum(calls) == 15 and max(calls) == 4
    assert res["n_samples"] == 15 and res["n_per_class"] == 5
    assert res["accuracy_by_class"] == {0: 1.0, 1: 1.0, 2: 0.0}
    assert res["correct_by_class"] == {0: 5, 1: 5, 2: 0}
    assert res["predicted_counts_by_class"][2] == [5, 0, 0]
    assert res["mean_accuracy"] == pytest.approx(2 / 3)
    assert set(res["mean_entropy_by_class"]) == {0, 1, 2}


def test_metrics_on_tiny_unet(tiny_unet, tiny_scheduler):
    def sample_fn(n, class_labels, generator=None):
        return ddim_sample(tiny_unet, tiny_scheduler, n, class_labels, steps=2, null_label=3, generator=generator)

    res = generation_accuracy(sample_fn, MeanJudge(), [0, 2], n_per_class=3,
                              generator=torch.Generator().manual_seed(0))
    assert res["n_samples"] == 6 and set(res["accuracy_by_class"]) == {0, 2}
    assert all(0 <= v <= 1 for v in res["accuracy_by_class"].values())
    again = generation_accuracy(sample_fn, MeanJudge(), [0, 2], n_per_class=3,
                                generator=torch.Generator().manual_seed(0))
    assert again == res
    share = unconditional_class_share(sample_fn, MeanJudge(), 7, classes=[1], batch_size=3,
                                      generator=torch.Generator().manual_seed(0))
    assert share["n_samples"] == 7 and sum(share["counts_by_class"].values()) == 7
    assert sum(share["share_by_class"].values()) == pytest.approx(1.0)
    assert share["share_of_classes"] == share["share_by_class"][1]
    assert 0 <= share["mean_probability_of_classes"] <= 1


def test_metric_errors():
    judge = MeanJudge()
    with pytest.raises(ValueError, match="at least one class"):
        generation_accuracy(lambda n, y: torch.zeros(n, 1, 4, 4), judge, [], 2)
    with pytest.raises(ValueError, match="must return a tensor with 2 images"):
        generation_accuracy(lambda n, y: torch.zeros(1, 1, 4, 4), judge, [0], 2)
    with pytest.raises(ValueError, match="outside the judge's classes 0–2"):
        unconditional_class_share(lambda n, y: torch.zeros(n, 1, 4, 4), judge, 2, classes=[5])
