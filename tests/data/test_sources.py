import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.data.errors import DataError
from fastunlearn.data.sources import list_image_files, load_images


def _write(tmp_path, name, arr, mode=None):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def test_folder_of_mixed_images(tmp_path):
    _write(tmp_path, "a.png", np.full((16, 16), 255, np.uint8))
    _write(tmp_path, "b.jpg", np.zeros((32, 24, 3), np.uint8))
    _write(tmp_path, "sub/c.bmp", np.full((8, 8, 3), 128, np.uint8))
    (tmp_path / "README.txt").write_text("not an image")
    x = load_images(tmp_path, size=16, channels=1)
    assert x.shape == (3, 1, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(1, 16, 16))
    assert x[1].max() < -0.9
    assert [p.name for p in list_image_files(tmp_path)] == ["a.png", "b.jpg", "c.bmp"]
    rgb = load_images(tmp_path, size=8, channels=3)
    assert rgb.shape == (3, 3, 8, 8)


def test_single_file_and_rgba(tmp_path):
    p = _write(tmp_path, "x.png", np.full((10, 10, 4), 255, np.uint8))
    assert load_images(p, size=16, channels=1).shape == (1, 1, 16, 16)


def test_arrays_ranges_and_layouts():
    u8 = np.full((2, 16, 16), 255, np.uint8)
    assert torch.allclose(load_images(u8, 16, 1), torch.ones(2, 1, 16, 16))
    f01 = torch.zeros(3, 16, 16, 1)  # NHWC, [0, 1]
    assert torch.allclose(load_images(f01, 16, 1), -torch.ones(3, 1, 16, 16))
    pm1 = torch.rand(4, 3, 32, 32) * 2 - 1
    out = load_images(pm1, 16, 1)
    assert out.shape == (4, 1, 16, 16) and out.min() >= -1 and out.max() <= 1
    explicit = load_images(torch.full((1, 1, 16, 16), 0.5), 16, 1, value_range=(-1.0, 1.0))
    assert torch.allclose(explicit, torch.full((1, 1, 16, 16), 0.5))
    grey_to_rgb = load_images(torch.zeros(1, 1, 16, 16), 16, 3)
    assert grey_to_rgb.shape == (1, 3, 16, 16)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="has 5 channel\\(s\\) but the model expects 1"):
        load_images(torch.zeros(2, 5, 16, 16), 16, 1)
    with pytest.raises(DataError, match="has 2 channel\\(s\\) but the model expects 3"):
        load_images(torch.zeros(2, 2, 16, 16), 16, 3)
    with pytest.raises(DataError, match="does not exist"):
        load_images(tmp_path / "missing", 16, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no image file .*1 other file"):
        load_images(empty, 16, 1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image file .*broken.png"):
        load_images(bad, 16, 1)
    with pytest.raises(DataError, match="holds no image"):
        load_images(np.zeros((0, 1, 16, 16), np.float32), 16, 1)
    with pytest.raises(DataError, match="unsupported image source of type int"):
        load_images(3, 16, 1)
    with pytest.raises(DataError, match="5 dimension"):
        load_images(torch.zeros(1, 1, 1, 16, 16), 16, 1)
