import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.data.digits import load_digits_split
from fastunlearn.data.errors import DataError
from fastunlearn.data.selection import format_classes, select_forget_retain
from fastunlearn.errors import UserInputError


@pytest.fixture(scope="module")
def train():
    return load_digits_split("train")


def test_class_selector_and_complement(train):
    fr = select_forget_retain("class:0", pool=train)
    assert fr.forget_classes == [0] and fr.retain_classes == list(range(1, 10))
    assert len(fr.forget_labels) + len(fr.retain_labels) == len(train)
    assert torch.all(fr.forget_labels == 0) and torch.all(fr.retain_labels != 0)
    assert fr.forget_images.shape[1:] == (1, 16, 16)
    assert "forget" in fr.description and "class" in fr.description


def test_several_classes_and_equals_form(train):
    fr = select_forget_retain("class=0, 3", pool=train)
    assert fr.forget_classes == [0, 3]
    assert set(fr.retain_classes) == set(range(10)) - {0, 3}
    assert select_forget_retain("class:0-2", pool=train).forget_classes == [0, 1, 2]


def test_index_selector_forms(train):
    ids = train.indices[:5].tolist()
    a = select_forget_retain("index:" + ",".join(map(str, ids)), pool=train)
    b = select_forget_retain(ids, pool=train)
    assert torch.equal(a.forget_indices, torch.tensor(ids))
    assert torch.equal(a.forget_images, b.forget_images)
    assert len(a.retain_labels) == len(train) - 5
    lo = int(train.indices[0])
    run = [i for i in range(lo, lo + 30) if i in set(train.indices.tolist())][:3]
    r = select_forget_retain(f"index:{run[0]}-{run[0]}", pool=train)
    assert r.forget_indices.tolist() == [run[0]]


def test_explicit_retain_and_overlap(train):
    fr = select_forget_retain("class:1", retain="class:2", pool=train)
    assert fr.retain_classes == [2]
    ones = train.indices[train.labels == 1][:3].tolist()
    with pytest.raises(DataError, match=r"^3 samples are in both the forget and the retain set"):
        select_forget_retain("class:1", retain=ones, pool=train)


def test_errors_are_user_errors_with_clear_messages(train):
    with pytest.raises(UserInputError) as e:
        select_forget_retain("class:11", pool=train)
    assert str(e.value) == (
        "forget set is empty: the selector `class:11` matched no sample (classes present: 0–9)"
    )
    assert isinstance(e.value, ValueError)
    with pytest.raises(DataError, match="malformed selector `clas:0`"):
        select_forget_retain("clas:0", pool=train)
    with pytest.raises(DataError, match="malformed selector `class:a`"):
        select_forget_retain("class:a", pool=train)
    with pytest.raises(DataError, match="no value after `class:`"):
        select_forget_retain("class:", pool=train)
    with pytest.raises(DataError, match="outside the data set's indices 0–1796"):
        select_forget_retain("index:5000", pool=train)
    test_id = int(load_digits_split("test").indices[0])
    with pytest.raises(DataError, match="not in the pool"):
        select_forget_retain([test_id], pool=train)
    with pytest.raises(DataError, match="more than once"):
        select_forget_retain([int(train.indices[0])] * 2, pool=train)
    with pytest.raises(DataError, match="retain set is empty"):
        select_forget_retain("class:0-9", pool=train)
    with pytest.raises(DataError, match="retain set is empty: the selector `class:12`"):
        select_forget_retain("class:0", retain="class:12", pool=train)


def test_folder_selector(tmp_path, train):
    for c in (3, 4):
        (tmp_path / str(c)).mkdir()
        Image.fromarray(np.full((16, 16), 200, np.uint8)).save(tmp_path / str(c) / "a.png")
    fr = select_forget_retain(str(tmp_path), pool=train)
    assert fr.forget_labels.tolist() == [3, 4] and fr.forget_classes == [3, 4]
    assert len(fr.retain_labels) == len(train)  # folder images are not pool samples
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "x.png")
    fr = select_forget_retain(flat, retain="class:1", pool=train)
    assert fr.forget_labels.tolist() == [-1] and fr.forget_classes == []


def test_format_classes():
    assert format_classes([0, 1, 2, 3, 5, 7, 8]) == "0–3, 5, 7–8"
    assert format_classes([]) == "none"
