"""`fastunlearn run`: a smoke run on a tiny model, and every bad input of issue 3 part 7 giving exit code 2,
one line on stderr, no traceback and no output directory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import UNet2DModel

from fastunlearn.cli import main


def test_run_smoke(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", "--model", str(tiny_model_dir), "--steps", "2", "--batch-size", "4", "--no-eval", "--quiet",
               "--out", str(out), "--device", "cpu", "--lambda-rule", "cosine", "-o", "eta=0.2"])
    assert rc == 0
    assert "2 steps" in capsys.readouterr().out
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "model_index.json"):
        assert (out / name).is_file(), name
    UNet2DModel.from_pretrained(out, subfolder="unet")
    config = (out / "config.yaml").read_text()
    assert "lambda_rule: cosine" in config and "eta: 0.2" in config
    # The written config.yaml reruns the job.
    assert main(["run", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"), "--quiet"]) == 0


def _bad_inputs(model_dir: Path, tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    no_weights = tmp_path / "no-weights"
    (no_weights / "unet").mkdir(parents=True)
    (no_weights / "unet" / "config.json").write_text((model_dir / "unet" / "config.json").read_text())
    yaml_bad = tmp_path / "bad.yaml"
    yaml_bad.write_text("steps: 3\nbogus_key: 1\n")
    m = ["--model", str(model_dir), "--no-eval"]
    return {
        "empty forget set": (m + ["--forget", "class:11"], "forget set is empty"),
        "overlap": (m + ["--forget", "class:0", "--retain", "class:0,1"], "in both the forget and the retain set"),
        "unknown method": (m + ["--method", "salun-xyz"], "unknown method 'salun-xyz'; known methods: advunlearn, erasediff"),
        "unknown option": (m + ["-o", "lambda=3"], "unknown option 'lambda'"),
        "unknown option value": (m + ["--lambda-rule", "median"], "unknown erasediff lambda_rule 'median'"),
        "steps <= 0": (m + ["--steps", "0"], "steps must be a positive integer"),
        "no weights": (["--model", str(no_weights), "--no-eval"], "has no weights"),
        "not a model": (["--model", str(tmp_path), "--no-eval"], "not a diffusers model directory"),
        "unknown config key": (m + ["--config", str(yaml_bad)], "unknown config key 'bogus_key'"),
        "nothing to resume": (m + ["--resume"], "nothing to resume"),
    }


@pytest.mark.parametrize("case", [
    "empty forget set", "overlap", "unknown method", "unknown option", "unknown option value", "steps <= 0",
    "no weights", "not a model", "unknown config key", "nothing to resume",
])
def test_bad_input_is_exit_2_and_one_line(case, tiny_model_dir, tmp_path, capsys):
    args, message = _bad_inputs(tiny_model_dir, tmp_path)[case]
    out = tmp_path / "out"
    assert main(["run", *args, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastunlearn: error:"), err
    assert message in err
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_image_size_mismatch_names_expected_and_got(tmp_path, make_tiny_unet, capsys):
    from fastunlearn.models.ddpm import DDPMAdapter

    DDPMAdapter(make_tiny_unet(size=32, channels=3), null_label=10).save_pretrained(tmp_path / "rgb32")
    assert main(["run", "--model", str(tmp_path / "rgb32"), "--no-eval", "--out", str(tmp_path / "o")]) == 2
    assert "expected 3×32×32 (channels×height×width), got 1×16×16" in capsys.readouterr().err


def test_unknown_class_for_the_model(tmp_path, make_tiny_unet, capsys):
    from fastunlearn.models.ddpm import DDPMAdapter

    DDPMAdapter(make_tiny_unet(num_class_embeds=6), null_label=5).save_pretrained(tmp_path / "five")
    assert main(["run", "--model", str(tmp_path / "five"), "--forget", "class:7", "--no-eval",
                 "--out", str(tmp_path / "o")]) == 2
    assert "model knows classes 0–4" in capsys.readouterr().err


def test_cli_process_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastunlearn.cli", "run", "--steps", "-1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["fastunlearn: error: steps must be a positive integer, got -1"]
