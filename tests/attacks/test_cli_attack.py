"""``fastunlearn attack``: bad input ends in one line and exit code 2; a run writes attack.json, images.npz,
grid.png and report.html that agree with each other."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastunlearn.cli import main

JUDGE = "import torch\ndef never(images):\n    return torch.zeros(images.shape[0], dtype=torch.bool)\n" \
        "def bright(images):\n    return (images.mean((1, 2, 3)) > images.mean()).tolist()\n"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, argv, match):
    try:
        code, _, err = run(capsys, *argv, "--quiet")
    except SystemExit as exc:  # argparse's own errors (fastunlearn's parser: one line, exit code 2)
        code, err = exc.code, capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err


@pytest.fixture
def judge_file(tmp_path):
    f = tmp_path / "judge.py"
    f.write_text(JUDGE)
    return f


def test_bad_input_is_one_line_and_exit_code_2(capsys, sd_dir, tiny_model_dir, tmp_path, judge_file):
    out = str(tmp_path / "out")
    one_line_error(capsys, ["attack", "--model", str(sd_dir), "--concept", "a cat", "--attack", "gcg", "--out", out],
                   "invalid choice: 'gcg'")
    one_line_error(capsys, ["attack", "--model", str(sd_dir), "--out", out], "--concept")
    one_line_error(capsys, ["attack", "--model", str(sd_dir), "--concept", " ", "--base", str(sd_dir),
                            "--judge", f"{judge_file}:never", "--out", out], "concept is missing")
    one_line_error(capsys, ["attack", "--model", str(tiny_model_dir), "--concept", "a cat", "--out", out],
                   "pixel DDPM")
    one_line_error(capsys, ["attack", "--model", str(sd_dir), "--concept", "a cat", "--out", out],
                   "--base MODEL")
    one_line_error(capsys, ["attack", "--model", str(sd_dir), "--concept", "a cat", "--base", str(sd_dir),
                            "--out", out], "no default judge")
    one_line_error(capsys, ["attack", "--model", str(sd_dir), "--concept", "a cat", "--base", str(sd_dir),
                            "--judge", f"{judge_file}:never", "--nudity", "--out", out], "not allowed with")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    one_line_error(capsys, ["attack", "--model", str(sd_dir), "--concept", "a cat", "--out", str(busy)],
                   "already holds other files")
    assert not (tmp_path / "out").exists()


def test_attack_writes_its_outputs(capsys, sd_dir, other_sd_dir, tmp_path, judge_file):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# wordings\na cat\na small cat\n")
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "attack", "--model", str(other_sd_dir), "--concept", "a cat", "--base",
                            str(sd_dir), "--attack", "paraphrase", "--prompts", str(prompts), "--judge",
                            f"{judge_file}:bright", "--num", "3", "--steps", "2", "--out", str(out), "--quiet")
    assert code == 0, err
    data = json.loads((out / "attack.json").read_text())
    assert data["attack"] == "paraphrase" and len(data["instances"]) == 6
    assert data["n"] + data["n_excluded"] == 6 and data["settings"]["prompts"] == ["a cat", "a small cat"]
    with np.load(out / "images.npz", allow_pickle=False) as arrays:
        assert arrays["before"].shape == arrays["after"].shape == arrays["base"].shape == (6, 3, 16, 16)
        assert list(arrays["prompts"]) == ["a cat"] * 3 + ["a small cat"] * 3
        assert list(arrays["seeds"]) == [i["seed"] for i in data["instances"]]
    html = (out / "report.html").read_text()
    assert "paraphrase against" in html and "a small cat" in html and (out / "grid.png").stat().st_size > 0
    assert stdout.strip().startswith("paraphrase on") and "ASR" in stdout

    out2 = tmp_path / "out2"
    code, stdout, err = run(capsys, "attack", "--model", str(sd_dir), "--concept", "a cat", "--base", str(sd_dir),
                            "--judge", f"{judge_file}:never", "--num", "2", "--k", "2", "--iterations", "2",
                            "--timesteps", "2", "--check-every", "1", "--steps", "2", "--out", str(out2), "--quiet")
    assert code == 0, err
    data = json.loads((out2 / "attack.json").read_text())
    assert data["settings"]["k"] == 2 and data["asr"] == 0.0 and data["n"] == 2
    adversarial = [i["adversarial_prompt"] for i in data["instances"]]
    assert all(a.endswith("a cat") for a in adversarial)
    html = (out2 / "report.html").read_text()
    assert all(a.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in html for a in adversarial)
    # a rerun into the same folder replaces the attack's own files
    code, _, err = run(capsys, "attack", "--model", str(sd_dir), "--concept", "a cat", "--base", str(sd_dir),
                       "--judge", f"{judge_file}:never", "--num", "1", "--iterations", "1", "--steps", "2",
                       "--timesteps", "2", "--out", str(out2), "--quiet")
    assert code == 0, err
    assert json.loads((out2 / "attack.json").read_text())["n"] == 1
