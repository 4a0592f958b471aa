"""`fastunlearn.run` and `UnlearnConfig`: construction, validation, output layout and replacement."""
from __future__ import annotations

import json

import pytest

import fastunlearn
from fastunlearn.config import UnlearnConfig
from fastunlearn.errors import UserInputError


def test_config_sources_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 7\nlr: 0.001\nlambda_rule: cosine\noptions:\n  eta: 0.3\n")
    cfg = UnlearnConfig.from_yaml(path)
    assert (cfg.steps, cfg.lr, cfg.options) == (7, 0.001, {"lambda_rule": "cosine", "eta": 0.3})
    cfg = UnlearnConfig.from_dict({"steps": 9, "out": "x"}, base=cfg)
    assert (cfg.steps, cfg.out_dir, cfg.options["eta"]) == (9, "x", 0.3)
    resolved = cfg.resolved()
    # target: auto until the model is known (pseudo_label on a class-conditional model, uniform otherwise)
    assert resolved.batch_size and resolved.options["target"] == "auto"
    assert UnlearnConfig.from_dict(resolved.to_dict()) == resolved  # config.yaml round-trips


def test_method_defaults_fill_only_what_is_not_given():
    default = UnlearnConfig().resolved()
    assert (default.steps, default.batch_size, default.lr) == (200, 32, 1e-4)
    assert default.options["lambda_rule"] == "bome" and default.options["eta"] == 0.5
    assert UnlearnConfig(options={"lambda_rule": "cosine"}).resolved().options["eta"] == 0.5
    assert UnlearnConfig(options={"lambda_rule": "fixed"}).resolved().options["eta"] == 0.1  # the authors' λ
    assert UnlearnConfig(options={"eta": 0.3}).resolved().options["eta"] == 0.3
    assert UnlearnConfig(options={"lambda_rule": "cosine", "eta": 0.2}).resolved().options["eta"] == 0.2
    assert UnlearnConfig(steps=3, lr=0.5).resolved().steps == 3


@pytest.mark.parametrize("values, message", [
    ({"stepz": 3}, "unknown config key 'stepz'"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": -5}, "steps must be a positive integer"),
    ({"lr": 0}, "lr must be a positive number"),
    ({"method": "nope"}, "unknown method 'nope'"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"options": {"eta": "high"}}, "must be a number"),
    ({"options": {"target": "noise"}}, "unknown erasediff target 'noise'"),
])
def test_config_errors(values, message):
    with pytest.raises(UserInputError, match=message):
        UnlearnConfig.from_dict(values).resolved()


def test_yaml_errors(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        UnlearnConfig.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        UnlearnConfig.from_yaml(tmp_path / "bad.yaml")


def test_run_returns_result_and_replaces_previous_output(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    kw = dict(model=str(tiny_model_dir), steps=2, out_dir=out, batch_size=4, evaluate=False, progress=False)
    first = fastunlearn.run(**kw)
    assert isinstance(first, fastunlearn.UnlearnResult) and first.out_dir == out.resolve()
    assert first.adapter.num_classes == 10 and first.metrics_after is None
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["train"]["steps"] == 2 and "forget: " in summary["forget"]
    fastunlearn.run(**kw, lambda_rule="fixed")  # a previous fastunlearn output is replaced whole
    assert "lambda_rule: fixed" in (out / "config.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny-ddpm"]


def test_run_refuses_a_foreign_output_dir(tiny_model_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(UserInputError, match="not a fastunlearn output"):
        fastunlearn.run(model=str(tiny_model_dir), steps=1, out_dir=tmp_path / "mine", evaluate=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_eta_has_one_default_per_rule_everywhere():
    """Options, parse_options, the run's resolution and the --eta help show the same η for each λ rule."""
    from fastunlearn.cli import build_parser
    from fastunlearn.methods.base import parse_options
    from fastunlearn.methods.erasediff import DEFAULT_ETA, EraseDiff, EraseDiffOptions

    assert DEFAULT_ETA == {"bome": 0.5, "cosine": 0.5, "fixed": 0.1}  # bome/cosine measured; fixed: the authors'
    for rule, eta in DEFAULT_ETA.items():
        assert EraseDiffOptions(lambda_rule=rule).eta == eta
        assert parse_options("erasediff", {"lambda_rule": rule}).eta == eta
        assert parse_options("erasediff", {"lambda_rule": rule, "eta": None}).eta == eta  # YAML `eta: null`
        assert UnlearnConfig(options={"lambda_rule": rule}).resolved().options["eta"] == eta
        assert "eta" not in EraseDiff.defaults(False, {"lambda_rule": rule}).get("options", {})  # one place
    assert EraseDiffOptions().eta == DEFAULT_ETA[EraseDiffOptions().lambda_rule]
    assert parse_options("erasediff", {"eta": "0.3"}).eta == 0.3  # CLI strings still become numbers
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
               if "--eta" in a.option_strings)
    assert "0.5 under bome and cosine" in run.help and "0.1 = λ under fixed" in run.help


def _tiny_unconditional_dir(path, make_tiny_unet):
    from diffusers import DDPMPipeline, DDPMScheduler

    DDPMPipeline(unet=make_tiny_unet(num_class_embeds=None), scheduler=DDPMScheduler(num_train_timesteps=1000)) \
        .save_pretrained(path, safe_serialization=True)
    return path


def test_unconditional_model_runs_with_the_default_target_and_records_it(tmp_path, make_tiny_unet):
    """A DDPM without a class embedding (as most hub DDPMs): EraseDiff's default target resolves to uniform,
    and config.yaml, metrics.json and the manifest say so; an explicit pseudo_label says what to pass."""
    model = _tiny_unconditional_dir(tmp_path / "uncond-ddpm", make_tiny_unet)
    out = tmp_path / "out"
    result = fastunlearn.run(model=str(model), steps=1, out_dir=out, batch_size=4, evaluate=False, progress=False)
    assert not result.adapter.conditional
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"]["hyperparameters"]["target"] == "uniform"
    assert json.loads((out / "metrics.json").read_text())["options"]["target"] == "uniform"
    assert "target: uniform" in (out / "config.yaml").read_text()
    with pytest.raises(UserInputError, match=r"--target uniform .*target=uniform"):
        fastunlearn.run(model=str(model), steps=1, out_dir=tmp_path / "out2", batch_size=4, evaluate=False,
                        progress=False, target="pseudo_label")
