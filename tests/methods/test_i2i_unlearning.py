"""Image-to-image unlearning (``i2i``, Li et al. ICLR 2024) and the paper's four baselines, on tiny 16×16 models.

Every number is checked against a plain-PyTorch re-implementation written here: the inpainter's encoder features
are the outputs of the UNet's own modules observed through forward hooks during its full forward, on an input
built by hand (float64 schedule, hole by slicing); the masked autoencoder's are ``model.vit`` called with a
hand-built patch ordering; the generator losses are the UNet's ε-MSE / the MAE's unpatchified reconstruction over
the hole by slicing; the step's random draws are replayed from the documented order. Gradients are compared
with plain autograd on that loss (so a wrong α or scale is caught — one Adam step alone is nearly sign(g)), and
the update with ``torch.optim.Adam``.

(Named ``test_i2i_unlearning.py``, not ``test_i2i.py``: ``tests/models/test_i2i.py`` exists and test files are
collected without packages, so a second basename would stop the whole suite's collection.)
"""
from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDPMScheduler

from fastunlearn.errors import UserInputError
from fastunlearn.methods import base as methods
from fastunlearn.methods.i2i import noise_images
from fastunlearn.models.ddpm import DDPMAdapter
from fastunlearn.models.i2i import build_tiny_inpaint, build_tiny_mae
from fastunlearn.models.masks import parse_mask

torch.set_num_threads(1)
HOLE = (slice(4, 12), slice(4, 12))  # center:8 on 16×16, by hand
#: The tiny inpainter's encoder outputs (DownBlock2D: resnet + downsampler; AttnDownBlock2D, the last: attention
#: only; the mid block), written out rather than read from the adapter.
INPAINT_MAPS = ["conv_in", "down_blocks.0.resnets.0", "down_blocks.0.downsamplers.0", "down_blocks.1.attentions.0",
                "mid_block"]
INPAINT_ENCODER = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
METHODS = ("i2i", "max_loss", "noisy_label", "retain_label", "random_encoder")
ALPHA = {"inpaint": 0.1, "mae": 0.2}  # the authors' defaults, by hand
N_F, N_R, LR = 3, 4, 1e-3


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def build(arch: str):
    return build_tiny_inpaint(seed=0) if arch == "inpaint" else build_tiny_mae(seed=0)


def setup(name: str, adapter, options=None, scope="encoder"):
    method = methods.get(name)()
    method.setup(adapter, methods.MethodConfig(lr=LR, options=methods.parse_options(name, options or {}),
                                               forget_classes=(0,), retain_classes=(1, 2), scope=scope))
    return method


def batches(seed: int, x_f: torch.Tensor, x_r: torch.Tensor):
    g = torch.Generator().manual_seed(seed)
    return (methods.Batch(x_f, torch.zeros(len(x_f), dtype=torch.long), g),
            methods.Batch(x_r, torch.ones(len(x_r), dtype=torch.long), g))


# ---------------------------------------------------------------------- the plain references
def with_hole(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[:, :, HOLE[0], HOLE[1]] = fill[:, :, HOLE[0], HOLE[1]]
    return out


def unet_input(scheduler, x, t, eps):
    """[x_t (noised in the hole only), masked image (hole 0), mask] by hand."""
    ab = scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    noisy = (ab.sqrt() * x.double() + (1 - ab).sqrt() * eps.double()).float()
    cond = x.clone()
    cond[:, :, HOLE[0], HOLE[1]] = 0
    m = torch.zeros(x.shape[0], 1, 16, 16)
    m[:, :, HOLE[0], HOLE[1]] = 1
    return torch.cat([with_hole(x, noisy), cond, m], 1)


def unet_maps(unet, scheduler, x, t, eps):
    """The encoder maps of the UNet's own full forward (hooks), and its ε prediction."""
    seen = {}
    modules = dict(unet.named_modules())
    hooks = [modules[n].register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, out))
             for n in INPAINT_MAPS]
    try:
        eps_hat = unet(unet_input(scheduler, x, t, eps), t).sample
    finally:
        for h in hooks:
            h.remove()
    return [seen[n] for n in INPAINT_MAPS], eps_hat


def hand_ordering(n: int) -> torch.Tensor:
    order = torch.arange(16, dtype=torch.float32)
    order[[5, 6, 9, 10]] += 100  # the hole's patches of the 4×4 grid, last
    return order.expand(n, -1)


def mae_latent(model, x):
    model.config.mask_ratio = 0.25
    return model.vit(x, noise=hand_ordering(x.shape[0])).last_hidden_state


def mae_reconstruction(model, x):
    model.config.mask_ratio = 0.25
    return model.unpatchify(model(x, noise=hand_ordering(x.shape[0])).logits, (16, 16))


def per_map(a, b):
    """Σ over maps of the mean squared difference (the authors' per-map sum)."""
    return sum(((p - q) ** 2).mean() for p, q in zip(a, b))


def reference_loss(arch, name, student, teacher, scheduler, x_f, x_r, seed, alpha):
    """(loss, L_F, L_R) of one step, from the draws replayed in the documented order."""
    g = torch.Generator().manual_seed(seed)
    inpaint = arch == "inpaint"

    def tdraw(n):
        if not inpaint:
            return None, None
        return torch.randint(0, 1000, (n,), generator=g), torch.randn(n, 1, 16, 16, generator=g)

    def maps(model, x, t, eps):
        return unet_maps(model, scheduler, x, t, eps)[0] if inpaint else [mae_latent(model, x)]

    def gen_loss(x, t, eps):
        if inpaint:
            out = unet_maps(student, scheduler, x, t, eps)[1] - eps
        else:
            out = mae_reconstruction(student, x) - x
        return (out[:, :, HOLE[0], HOLE[1]] ** 2).mean()

    t_f, e_f = tdraw(N_F)
    if name in ("i2i", "noisy_label"):
        z = torch.randn(N_F, 1, 16, 16, generator=g)
        if inpaint:
            noise = z
        else:  # mage: N(mean, std) per image, clamped
            mean = x_f.flatten(1).mean(1).view(-1, 1, 1, 1)
            std = x_f.flatten(1).std(1).view(-1, 1, 1, 1)
            noise = (mean + std * z).clamp(-1, 1)
    if name == "retain_label":
        pick = torch.randint(0, N_R, (N_F,), generator=g)
    t_r, e_r = tdraw(N_R)
    with torch.no_grad():
        kept = maps(teacher, x_r, t_r, e_r)
    loss_r = per_map(maps(student, x_r, t_r, e_r), kept)
    if name == "i2i":
        with torch.no_grad():
            target = maps(teacher, noise, t_f, e_f)
        loss_f = per_map(maps(student, x_f, t_f, e_f), target)
    elif name == "max_loss":
        loss_f = gen_loss(x_f, t_f, e_f)
        return loss_r - alpha * loss_f, loss_f, loss_r
    elif name == "noisy_label":
        loss_f = gen_loss(with_hole(x_f, noise), t_f, e_f)
    elif name == "retain_label":
        loss_f = gen_loss(with_hole(x_f, x_r[pick]), t_f, e_f)
    else:  # random_encoder: Gaussian noise in each map's own units, drawn after the forward
        student_maps = maps(student, x_f, t_f, e_f)
        z = [torch.randn(N_F, *m.shape[1:], generator=g) for m in student_maps]
        loss_f = per_map(student_maps, z)
    return loss_r + alpha * loss_f, loss_f, loss_r


def encoder_named(arch, model):
    if arch == "inpaint":
        return {n: p for n, p in model.named_parameters() if n.startswith(INPAINT_ENCODER)}
    return {n: p for n, p in model.named_parameters() if n.startswith("vit.") and p.requires_grad}


# ---------------------------------------------------------------------- the update equals plain autograd + Adam
@pytest.mark.parametrize("arch", ["inpaint", "mae"])
@pytest.mark.parametrize("name", METHODS)
def test_one_step_is_plain_autograd_and_adam(arch, name):
    adapter = build(arch)
    original = copy.deepcopy(adapter.model)
    student, teacher = copy.deepcopy(original), copy.deepcopy(original)
    scheduler = getattr(adapter, "scheduler", None)
    x_f, x_r = images(N_F, 1), images(N_R, 2)
    method = setup(name, adapter)
    assert method.resolved_options()["alpha"] == ALPHA[arch]
    metrics = method.step(*batches(7, x_f, x_r))

    ref = encoder_named(arch, student)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in ref.values():
        p.requires_grad_(True)
    loss, loss_f, loss_r = reference_loss(arch, name, student, teacher, scheduler, x_f, x_r, 7, ALPHA[arch])
    torch.testing.assert_close(metrics["loss_forget"], loss_f.detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(metrics["loss_retain"], loss_r.detach(), rtol=1e-4, atol=1e-8)
    loss.backward()
    got = dict(adapter.named_parameters("encoder"))
    assert sorted(got) == sorted(ref)
    for n, p in ref.items():  # the gradient the method applied (its flat buffer, bound to .grad)
        torch.testing.assert_close(got[n].grad, p.grad, rtol=2e-3, atol=1e-7, msg=n)
    before = {n: p.detach().clone() for n, p in ref.items()}
    torch.optim.Adam(list(ref.values()), lr=LR).step()
    for n, p in ref.items():
        # Adam's first step is lr·g/(|g| + 1e-8): where g is float noise (an attention key bias, which the softmax
        # ignores) only the step's size is defined; elsewhere the weights must agree
        clear = p.grad.abs() > 1e-5
        torch.testing.assert_close(got[n].detach()[clear], p.detach()[clear], rtol=1e-5, atol=1e-6, msg=n)
        assert ((got[n].detach() - before[n]).abs() <= LR * 1.001).all(), n
    # the decoder: no gradient, weights bitwise those of the original
    decoder = dict(original.named_parameters())
    for n, p in adapter.named_parameters("decoder"):
        assert p.grad is None and not p.requires_grad, n
        assert torch.equal(p.detach(), decoder[n].detach()), n


@pytest.mark.parametrize("arch", ["inpaint", "mae"])
@pytest.mark.parametrize("name", METHODS)
def test_several_steps_leave_decoder_and_teacher_untouched(arch, name):
    adapter = build(arch)
    original = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    method = setup(name, adapter)
    teacher = {n: p.detach().clone() for n, p in method.teacher.module.named_parameters()}
    assert teacher and not any(p.requires_grad for p in method.teacher.module.parameters())
    for step in range(3):
        metrics = method.step(*batches(step, images(N_F, 10 + step), images(N_R, 20 + step)))
        assert float(metrics["skipped"]) == 0.0
    for n, p in adapter.named_parameters("decoder"):
        assert p.grad is None, n
        assert torch.equal(p.detach(), original[n]), n
    changed = [n for n, p in adapter.named_parameters("encoder") if not torch.equal(p.detach(), original[n])]
    assert changed, "the encoder did not move"
    for n, p in method.teacher.module.named_parameters():
        assert torch.equal(p.detach(), teacher[n]), n
    # the teacher is θ₀'s encoder: its copy holds the original weights (no decoder module inside it)
    assert not any(n.startswith(("up_blocks.", "decoder.")) for n in teacher)


@pytest.mark.parametrize("name", METHODS)
def test_a_split_batch_draws_for_the_whole_global_batch(name):
    """Two processes' halves of a global batch (``Batch.rows``) average to the one-process gradient: every draw is
    made for the whole global batch, so no row's noise depends on the number of processes."""
    x_f, x_r = images(4, 1), images(4, 2)

    def grad(rows: slice) -> torch.Tensor:
        method = setup(name, build_tiny_inpaint(seed=0))
        f, r = batches(3, x_f, x_r)
        f.rows = r.rows = rows
        method.step(f, r)
        return method.flat.buffer.clone()

    whole = grad(slice(None))
    torch.testing.assert_close((grad(slice(0, 2)) + grad(slice(2, 4))) / 2, whole, rtol=2e-3, atol=1e-7)


# ---------------------------------------------------------------------- the forget target and the noise images
def test_noise_images_are_the_drawn_gaussians():
    x = images(5, 3) * 0.5
    mask = parse_mask("center:8", (1, 16, 16))
    z = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(noise_images(x, "palette", torch.Generator().manual_seed(4)), z)
    mage = noise_images(x, "mage", torch.Generator().manual_seed(4))
    for i in range(5):
        want = (x[i].mean() + x[i].std() * z[i]).clamp(-1, 1)
        torch.testing.assert_close(mage[i], want)
    assert mage.min() >= -1 and mage.max() <= 1
    wide = images(5, 3) * 30  # a wide spread: the clamp must act
    assert noise_images(wide, "mage", torch.Generator().manual_seed(4)).abs().max() == 1.0
    hole = noise_images(x, "hole", torch.Generator().manual_seed(4), mask)
    assert torch.equal(hole, with_hole(x, z))


def test_the_forget_target_moves_with_the_noise_image_only():
    """With the student still θ₀, L_F is the distance between the encodings of x_f and of its noise image under
    the same (t, ε): zero when the forget image IS its noise image (any mismatch of mask or draw would not be)."""
    x_f = images(N_F, 1)
    # replay the draws: (t, ε) first, then the noise image
    g = torch.Generator().manual_seed(5)
    torch.randint(0, 1000, (N_F,), generator=g)
    torch.randn(N_F, 1, 16, 16, generator=g)
    z = torch.randn(N_F, 1, 16, 16, generator=g)
    own = with_hole(x_f, z)  # the forget image whose hole already holds what the noise image will put there
    metrics = setup("i2i", build_tiny_inpaint(seed=0), {"noise": "hole"}).step(*batches(5, own, images(N_R, 2)))
    assert float(metrics["loss_forget"]) < 1e-10
    metrics = setup("i2i", build_tiny_inpaint(seed=0), {"noise": "hole"}).step(*batches(5, x_f, images(N_R, 2)))
    assert float(metrics["loss_forget"]) > 1e-4


# ---------------------------------------------------------------------- options and bad input
def test_options_resolve_per_architecture():
    for arch, noise in (("inpaint", "palette"), ("mae", "mage")):
        opts = setup("i2i", build(arch)).resolved_options()
        assert (opts["alpha"], opts["noise"]) == (ALPHA[arch], noise)
    opts = methods.parse_options("i2i", {"alpha": "0.35", "noise": "mage"})  # CLI strings
    assert opts.alpha == 0.35 and setup("i2i", build("inpaint"), {"alpha": "0.35"}).resolved_options()["alpha"] == 0.35
    assert methods.get("i2i").defaults(family="i2i")["scope"] == "encoder"


@pytest.mark.parametrize("name,options,words", [
    ("i2i", {"alpha": -0.1}, "alpha must be >= 0"),
    ("i2i", {"alpha": "lots"}, "must be a number"),
    ("i2i", {"noise": "uniform"}, "unknown i2i noise"),
    ("noisy_label", {"noise": "hole"}, "already puts the noise image in the hole"),
    ("max_loss", {"adam_beta1": 1.0}, "adam_beta1"),
    ("random_encoder", {"noise": "mage"}, "unknown option 'noise'"),
])
def test_bad_options(name, options, words):
    with pytest.raises(UserInputError, match=words):
        methods.parse_options(name, options)


def test_bad_setups_and_inputs(make_tiny_unet):
    with pytest.raises(UserInputError, match="masked autoencoder's encoder never sees"):
        setup("i2i", build("mae"), {"noise": "hole"})
    with pytest.raises(UserInputError, match="--scope must be encoder"):
        setup("i2i", build("inpaint"), scope="all")
    ddpm = DDPMAdapter(make_tiny_unet(), DDPMScheduler(num_train_timesteps=1000), null_label=10)
    for name in METHODS:
        with pytest.raises(UserInputError, match="unlearns an image-to-image model"):
            setup(name, ddpm)
    for arch in ("inpaint", "mae"):
        for name in METHODS:  # images that do not fit the model, on either side
            method = setup(name, build(arch))
            with pytest.raises(UserInputError, match="forget images do not fit the model"):
                method.step(*batches(0, torch.zeros(N_F, 1, 32, 32), images(N_R, 2)))
            with pytest.raises(UserInputError, match="retain images do not fit the model"):
                method.step(*batches(0, images(N_F, 1), torch.zeros(N_R, 3, 16, 16)))
    with pytest.raises(UserInputError, match="larger than the images"):  # a mask larger than the image
        build_tiny_inpaint(mask="center:20")


def test_every_method_is_registered_with_the_i2i_defaults():
    for name in METHODS:
        cls = methods.get(name)
        assert cls.defaults(family="i2i")["scope"] == "encoder"
        assert cls.fsdp_unsupported(methods.parse_options(name, {}))


def test_run_defaults_are_read_per_architecture(tmp_path):
    """Every image-to-image method takes the measured defaults of the model's architecture, read from the
    model's fastunlearn.json (zoo name, saved directory, adapter); a model whose architecture cannot be read
    gets the generic ones. Values by hand (the measured ones, methods/i2i.py)."""
    from fastunlearn.config import UnlearnConfig

    mae = {"steps": 1500, "batch_size": 32, "lr": 3e-4, "scope": "encoder"}
    inpaint = {"steps": 1000, "batch_size": 32, "lr": 1e-3, "scope": "encoder"}
    build("mae").save_pretrained(tmp_path / "mae")
    for name in METHODS:
        cls = methods.get(name)
        assert cls.defaults(family="i2i", model="zoo:digits-mae") == mae
        assert cls.defaults(family="i2i", model="zoo:digits-inpaint") == inpaint
        assert cls.defaults(family="i2i", model=str(tmp_path / "mae")) == mae
        assert cls.defaults(family="i2i", model=build("inpaint")) == inpaint
        assert cls.defaults(family="i2i", model=str(tmp_path / "nowhere"))["steps"] == 1000
    cfg = UnlearnConfig(model="zoo:digits-mae", method="i2i", forget="class:0").resolved()
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.scope) == (1500, 32, 3e-4, "encoder")
    cfg = UnlearnConfig(model="zoo:digits-inpaint", method="noisy_label", forget="class:0", lr=5e-4).resolved()
    assert (cfg.steps, cfg.lr) == (1000, 5e-4)  # given values win
