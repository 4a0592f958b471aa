import torch

from fastunlearn.data import digits
from fastunlearn.data.digits import load_digits_split


def test_shapes_range_and_sizes():
    train, test = load_digits_split("train"), load_digits_split("test")
    assert len(train) + len(test) == digits.NUM_IMAGES
    for d in (train, test):
        assert d.images.shape == (len(d), 1, 16, 16)
        assert d.images.dtype == torch.float32 and d.labels.dtype == torch.long
        assert d.images.min() >= -1 and d.images.max() <= 1
    # the 2-px border is background
    x = train.images
    assert torch.all(x[..., :2, :] == -1) and torch.all(x[..., :, -2:] == -1)
    assert 0.18 < len(test) / digits.NUM_IMAGES < 0.22


def test_split_is_deterministic_disjoint_and_stratified():
    a, b = load_digits_split("train"), load_digits_split("train")
    assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    test = load_digits_split("test")
    assert not set(a.indices.tolist()) & set(test.indices.tolist())
    all_ = load_digits_split("all")
    for c in range(10):
        n_c = int((all_.labels == c).sum())
        n_test = int((test.labels == c).sum())
        assert abs(n_test - digits.TEST_FRACTION * n_c) <= 1


def test_indices_trace_back_to_source():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    test = load_digits_split("test")
    assert torch.equal(test.labels, torch.as_tensor(bunch.target[test.indices.numpy()]))
    assert torch.equal(test.images, digits.preprocess(bunch.data[test.indices.numpy()]))


def test_unknown_split():
    import pytest

    with pytest.raises(ValueError, match="unknown digits split 'val'"):
        load_digits_split("val")
