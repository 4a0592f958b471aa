import json
from dataclasses import asdict

import pytest
import torch

from fastunlearn import zoo
from fastunlearn.data.digits import load_digits_split
from fastunlearn.errors import UserInputError
from fastunlearn.zoo.classifier import DigitsClassifier
from fastunlearn.zoo.train import CONFIGS, ClassifierTrainConfig, DDPMTrainConfig, config_to_json


def test_available_and_resolve():
    names = zoo.available()
    assert set(names) == {"digits-ddpm", "digits-classifier", "digits-svm", "digits-t2i", "digits-inpaint", "digits-mae"}
    assert zoo.resolve("zoo:digits-ddpm") == zoo.resolve("digits-ddpm")
    assert (zoo.resolve("zoo:digits-ddpm") / "model_index.json").is_file()


def test_unknown_name_lists_what_exists():
    with pytest.raises(UserInputError, match="unknown zoo model 'zoo:nope': the zoo has zoo:digits-ddpm, zoo:digits-classifier, zoo:digits-svm, zoo:digits-t2i, zoo:digits-inpaint, zoo:digits-mae"):
        zoo.resolve("zoo:nope")


@pytest.mark.parametrize("name", ["digits-ddpm", "digits-classifier", "digits-svm"])
def test_recorded_config_equals_training_script(name):
    record = json.loads((zoo.resolve(name) / "training.json").read_text())
    assert record["config"] == config_to_json(CONFIGS[name])
    assert record["train_wall_time_s"] > 0
    assert record["versions"]["torch"]
    assert record["quality"]


def test_config_dataclasses_are_the_registered_ones():
    assert asdict(CONFIGS["digits-classifier"]) == asdict(ClassifierTrainConfig())
    assert asdict(CONFIGS["digits-ddpm"]) == asdict(DDPMTrainConfig())


def test_ddpm_loads_both_ways():
    from diffusers import DDPMPipeline, UNet2DModel

    path = zoo.resolve("zoo:digits-ddpm")
    unet = UNet2DModel.from_pretrained(path, subfolder="unet")
    assert unet.config.num_class_embeds == 11
    assert unet.class_embedding.num_embeddings == 11
    assert unet.config.sample_size == 16 and unet.config.in_channels == 1
    n_params = sum(p.numel() for p in unet.parameters())
    assert 0.5e6 < n_params < 2e6
    pipe = DDPMPipeline.from_pretrained(path)
    assert pipe.scheduler.config.num_train_timesteps == 1000
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_classifier_accuracy_on_test_split():
    model = zoo.load_classifier()
    assert isinstance(model, DigitsClassifier) and not model.training
    test = load_digits_split("test")
    acc = float((model.predict(test.images) == test.labels).float().mean())
    assert acc >= 0.97
    feats = model.features(test.images[:4])
    assert feats.shape == (4, model.config.feature_dim)
    assert model(test.images[:4]).shape == (4, 10)


def test_classifier_roundtrip(tmp_path):
    model = DigitsClassifier(widths=(4, 8), feature_dim=16)
    model.save_pretrained(tmp_path)
    again = DigitsClassifier.from_pretrained(tmp_path)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.allclose(model.eval()(x), again.eval()(x))


def test_classifier_training_path_runs(tmp_path):
    """The real training function, on a tiny architecture for one epoch (seconds)."""
    from dataclasses import replace

    from fastunlearn.zoo.train import train_classifier

    arch = dict(CONFIGS["digits-classifier"].architecture, widths=(4, 8), feature_dim=16)
    config = replace(CONFIGS["digits-classifier"], epochs=1, architecture=arch)
    record = train_classifier(config, tmp_path)
    assert record["config"]["epochs"] == 1
    assert 0.0 <= record["quality"]["test_accuracy"] <= 1.0
    assert DigitsClassifier.from_pretrained(tmp_path).config.feature_dim == 16


@pytest.mark.slow
def test_ddpm_training_path_runs(tmp_path):
    """A few real DDPM training steps and a save that loads back (slow: the eval is skipped)."""
    from dataclasses import replace

    from diffusers import DDPMPipeline

    from fastunlearn.zoo.train import train_ddpm

    record = train_ddpm(replace(CONFIGS["digits-ddpm"], steps=2, batch_size=4), tmp_path)
    assert record["config"]["steps"] == 2
    assert DDPMPipeline.from_pretrained(tmp_path).unet.config.num_class_embeds == 11


def test_recorded_ddpm_quality_meets_the_bar():
    q = json.loads((zoo.resolve("digits-ddpm") / "training.json").read_text())["quality"]
    g1 = q["generation_accuracy_guidance_1"]
    assert g1["n_per_class"] == 50 and g1["mean_accuracy"] >= 0.90
    assert "generation_accuracy_guidance_2" in q
    shares = q["unconditional_class_share"]["share_by_class"]
    assert len(shares) == 10 and max(shares.values()) < 0.25 and min(shares.values()) > 0.03
    assert (zoo.resolve("digits-ddpm") / "samples.png").is_file()


@pytest.mark.slow
def test_shipped_ddpm_generation_accuracy_reproduces():
    """Re-measure (smaller sample) what training.json records: conditional samples are judged right."""
    from diffusers import DDPMScheduler

    from fastunlearn.eval.classifier import generation_accuracy
    from fastunlearn.models.sampling import ddim_sample

    path = zoo.resolve("digits-ddpm")
    unet, judge = zoo.load_unet(), zoo.load_classifier()
    sched = DDPMScheduler.from_pretrained(path, subfolder="scheduler")

    def sample_fn(n, class_labels, generator=None):
        return ddim_sample(unet, sched, n, class_labels, steps=50, generator=generator)

    res = generation_accuracy(sample_fn, judge, range(10), 20, generator=torch.Generator().manual_seed(0))
    assert res["mean_accuracy"] >= 0.85
