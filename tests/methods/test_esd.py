"""ESD on a tiny offline Stable Diffusion pipeline.

Every numerical check compares with an independent path: the frozen trajectories are re-run with raw diffusers
calls on an untouched copy of the pipeline (its ``encode_prompt``, two separate UNet calls per step, and
``DDIMScheduler.step``); the update is plain autograd of the MSE to the ESD target formed from those raw
predictions, then one ``torch.optim.Adam`` step over parameters picked by name here — never the method's own
intermediates.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from fastunlearn.errors import UserInputError
from fastunlearn.methods import base as methods
from fastunlearn.methods.esd import ESD, bank_seed
from fastunlearn.models import load_model
from fastunlearn.models.tiny_sd import build_tiny_sd

CAT, DOG, FOX = "a cat", "a dog", "a red fox"
STEPS, TRAJ = 5, 2  # DDIM steps per trajectory and trajectories per prompt: rows per prompt = 10


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second thread only waits on a loaded 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipes():
    """One tiny pipeline per prediction type; tests deep-copy it (the method trains the adapter's UNet in place)."""
    return {p: build_tiny_sd(prediction_type=p, seed=0) for p in ("epsilon", "v_prediction")}


def fresh(pipe):
    """(adapter over a private copy of ``pipe``, an untouched copy of ``pipe`` for the independent path)."""
    return load_model(copy.deepcopy(pipe)), copy.deepcopy(pipe)


def setup_esd(adapter, forget=(CAT,), retain=(), scope="xattn", lr=1e-3, **options):
    options = {"trajectories": TRAJ, "ddim_steps": STEPS, **options}
    ids = adapter.prompt_ids(list(forget) + list(retain))
    method = methods.get("esd")()
    method.setup(adapter, methods.MethodConfig(
        lr=lr, options=methods.parse_options("esd", options), scope=scope,
        forget_classes=tuple(ids[:len(forget)].tolist()), retain_classes=tuple(ids[len(forget):].tolist())))
    return method, ids


def batches(adapter, forget, retain, seed, rows=slice(None)):
    """The step's forget and retain batches, sharing one step generator as the engine hands them."""
    g = torch.Generator().manual_seed(seed)
    return tuple(methods.Batch(torch.zeros(len(p), 0), adapter.prompt_ids(list(p)), g, rows) for p in (forget, retain))


# ---------------------------------------------------------------------- the independent path
@torch.no_grad()
def encode(pipe, prompt):
    return pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)[0]


def to_eps(pipe, out, x, t):
    """The UNet's raw output as ε (float64 schedule; v = √ᾱ ε − √(1−ᾱ) x₀ ⇒ ε = √ᾱ v + √(1−ᾱ) x_t)."""
    if pipe.scheduler.config.prediction_type == "epsilon":
        return out
    ab = pipe.scheduler.alphas_cumprod.double()[t]
    return (ab.sqrt() * out.double() + (1 - ab).sqrt() * x.double()).float()


@torch.no_grad()
def naive_trajectory(pipe, noise, prompt, steps=STEPS, guidance=3.0):
    """Frozen DDIM from ``noise`` [1, 4, 8, 8]: per step (x_t, t, ε(x_t, ∅), ε(x_t, prompt)), two UNet calls."""
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    empty, cond = encode(pipe, ""), encode(pipe, prompt)
    x, out = noise.clone(), []
    for t in sched.timesteps:
        u, c = pipe.unet(x, t, encoder_hidden_states=empty).sample, pipe.unet(x, t, encoder_hidden_states=cond).sample
        out.append((x.clone(), int(t), to_eps(pipe, u, x, int(t)), to_eps(pipe, c, x, int(t))))
        x = sched.step(u + guidance * (c - u), t, x).prev_sample
    return out


def initial_noise(n, generation=0, side=0, seed=0):
    """The bank's contract: initial latents drawn in row order from the seed of (bank_seed, generation, side)."""
    return torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(bank_seed(seed, generation, side)))


def drawn(sizes, seed, per_prompt=TRAJ * STEPS):
    """(trajectory, step) of each row as a step draws them from its generator: uniform in the prompt's J·S rows,
    one draw per row of the forget batch, then of the retain batch (``sizes``)."""
    g = torch.Generator().manual_seed(seed)
    within = torch.cat([torch.randint(0, per_prompt, (n,), generator=g) for n in sizes])
    return [(int(w) // STEPS, int(w) % STEPS) for w in within]


# ---------------------------------------------------------------------- the bank
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_bank_rows_equal_naive_frozen_ddim_at_every_step(pipes, prediction):
    """Row (p·J + j)·S + s holds step s of trajectory j: x_t at that step of a frozen guided DDIM from the
    trajectory's noise, its timestep, and the frozen ε under "" and under the prompt there."""
    adapter, plain = fresh(pipes[prediction])
    method, _ = setup_esd(adapter, forget=(CAT, DOG))
    bank = method.bank
    assert bank.x_t.shape == (2 * TRAJ * STEPS, 4, 8, 8) and bank.rows_per_prompt == TRAJ * STEPS
    noise = initial_noise(2 * TRAJ)
    for p, prompt in enumerate(sorted([CAT, DOG], key=lambda q: int(adapter.prompt_ids([q])[0]))):
        for j in range(TRAJ):
            for s, (x, t, e_u, e_c) in enumerate(naive_trajectory(plain, noise[p * TRAJ + j:p * TRAJ + j + 1], prompt)):
                row = (p * TRAJ + j) * STEPS + s
                assert int(bank.t[row]) == t
                torch.testing.assert_close(bank.x_t[row], x[0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(bank.eps_uncond[row], e_u[0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(bank.eps_cond[row], e_c[0], atol=1e-5, rtol=1e-4)
    assert bank.eps_anchor is None


def test_erase_from_samples_from_that_prompt_and_anchors_there(pipes):
    """With erase_from = c′: the trajectories are sampled from c′, ``eps_anchor`` = ε₀(x_t, c′) and ``eps_cond`` the
    forget prompt's ε₀(x_t, c) at those x_t."""
    adapter, plain = fresh(pipes["epsilon"])
    method, _ = setup_esd(adapter, forget=(CAT,), erase_from=FOX)
    bank, cat = method.bank, encode(plain, CAT)
    for j, noise in enumerate(initial_noise(TRAJ)):
        for s, (x, t, e_u, e_fox) in enumerate(naive_trajectory(plain, noise[None], FOX)):
            row = j * STEPS + s
            with torch.no_grad():
                e_cat = plain.unet(x, t, encoder_hidden_states=cat).sample
            torch.testing.assert_close(bank.x_t[row], x[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(bank.eps_uncond[row], e_u[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(bank.eps_anchor[row], e_fox[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(bank.eps_cond[row], e_cat[0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- the update
def scoped(name: str, scope: str) -> bool:
    """The authors' scope rules on diffusers names (ESD-x: cross-attention; ESD-u: the rest but the time
    embedding and the output layers); the tiny UNet has no encoder_hid_proj."""
    if scope == "xattn":
        return ".attn2." in name
    return ".attn2." not in name and not name.startswith(("time_embedding.", "conv_out.", "conv_norm_out."))


@pytest.mark.parametrize("scope,retain_weight,erase_from", [
    ("xattn", 0.0, ""),
    ("noxattn", 0.5, ""),
    ("xattn", 0.0, FOX),
])
def test_one_step_equals_plain_autograd_and_adam(pipes, scope, retain_weight, erase_from):
    """One step = Adam on ∇ of mean ‖ε_θ(x_t, c_θ) − (ε₀(x_t, a) − η(ε₀(x_t, c) − ε₀(x_t, ∅)))‖² (+ w · the
    retained prompt's ‖ε_θ − ε₀‖²) over the drawn rows, for the scope's parameters only (η = 1.5)."""
    eta, lr, seed = 1.5, 1e-3, 11
    adapter, plain = fresh(pipes["epsilon"])
    frozen = copy.deepcopy(plain)
    retain = (DOG,) if retain_weight else ()
    method, _ = setup_esd(adapter, forget=(CAT,), retain=retain, scope=scope, lr=lr, eta=eta,
                          retain_weight=retain_weight, erase_from=erase_from)
    # θ moved off θ₀ (the bank stays θ₀'s): at θ₀ the preservation term and its gradient are exactly zero.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for (n, p), q in zip(adapter.named_parameters("all"), plain.unet.parameters()):
            if scoped(n, scope):
                delta = 0.05 * p.abs().mean() * torch.randn(p.shape, generator=g)
                p.add_(delta), q.add_(delta)
    before = {n: p.detach().clone() for n, p in plain.unet.named_parameters()}
    method.step(*batches(adapter, [CAT] * 3, [DOG] * 2, seed))

    # The same draws, made independently: the forget rows, then the retain rows, from one step generator.
    gen_rows = drawn((3, 2) if retain_weight else (3,), seed)
    noise_f, noise_r = initial_noise(TRAJ, side=0), initial_noise(TRAJ, side=1)
    sample_prompt = erase_from or CAT
    xs, ts, targets, prompts = [], [], [], []
    for j, s in gen_rows[:3]:
        x, t, e_u, e_sample = naive_trajectory(frozen, noise_f[j:j + 1], sample_prompt)[s]
        with torch.no_grad():
            e_cat = frozen.unet(x, t, encoder_hidden_states=encode(frozen, CAT)).sample
        anchor = e_sample if erase_from else e_u
        xs.append(x), ts.append(t), targets.append(anchor - eta * (e_cat - e_u)), prompts.append(sample_prompt)
    for j, s in gen_rows[3:]:
        x, t, _, e_dog = naive_trajectory(frozen, noise_r[j:j + 1], DOG)[s]
        xs.append(x), ts.append(t), targets.append(e_dog), prompts.append(DOG)

    unet = plain.unet
    names = [n for n, _ in unet.named_parameters() if scoped(n, scope)]
    opt = torch.optim.Adam([p for n, p in unet.named_parameters() if n in names], lr=lr)
    preds = [unet(x, torch.tensor([t]), encoder_hidden_states=encode(plain, c)).sample
             for x, t, c in zip(xs, ts, prompts)]
    loss = F.mse_loss(torch.cat(preds[:3]), torch.cat(targets[:3]))
    if retain_weight:
        loss = loss + retain_weight * F.mse_loss(torch.cat(preds[3:]), torch.cat(targets[3:]))
    loss.backward()
    opt.step()

    # The gradient itself (Adam's first step is blind to its scale), then the weights: a first Adam step moves a
    # weight by lr·g/(|g| + 1e-8), so where |g| is within a few hundred ε a rounding-level gradient difference
    # moves the update by a share of lr; the weights are compared where |g| > 1e-5.
    trained = dict(adapter.named_parameters("all"))
    scale = max(float(p.grad.abs().max()) for n, p in unet.named_parameters() if n in names)
    moved = 0
    for n, p in unet.named_parameters():
        if n in names:
            torch.testing.assert_close(trained[n].grad, p.grad, atol=1e-5 * scale, rtol=1e-4)
            sure = p.grad.abs() > 1e-5
            torch.testing.assert_close(trained[n].detach()[sure], p.detach()[sure], atol=1e-2 * lr, rtol=0)
            moved += not torch.equal(trained[n], before[n])
        else:
            assert torch.equal(trained[n], before[n]), f"{n} is outside scope {scope} but changed"
    assert moved > 0


def test_only_the_scope_trains_and_the_text_encoder_and_vae_stay(pipes):
    adapter, _ = fresh(pipes["epsilon"])
    te = [p.detach().clone() for p in adapter.text_encoder.parameters()]
    vae = [p.detach().clone() for p in adapter.vae.parameters()]
    outside = {n: p.detach().clone() for n, p in adapter.named_parameters("all") if ".attn2." not in n}
    inside = {n: p.detach().clone() for n, p in adapter.named_parameters("xattn")}
    method, _ = setup_esd(adapter, retain=(DOG,), retain_weight=1.0, lr=1e-2)
    for i in range(3):
        method.step(*batches(adapter, [CAT] * 2, [DOG] * 2, i))
    now = dict(adapter.named_parameters("all"))
    assert all(torch.equal(now[n], p) for n, p in outside.items())
    assert all(not torch.equal(now[n], p) for n, p in inside.items())
    assert all(torch.equal(a, b) for a, b in zip(te, adapter.text_encoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(vae, adapter.vae.parameters()))


def test_text_encoder_scope_trains_the_encoder_alone(pipes):
    """Scope ``text-encoder`` (AdvUnlearn's setting): ε_θ reads prompts through the trained encoder, so the encoder
    moves and the UNet does not; the bank (built first) holds the frozen encoder's predictions."""
    adapter, plain = fresh(pipes["epsilon"])
    unet = [p.detach().clone() for p in adapter.parameters("all")]
    te = [p.detach().clone() for p in adapter.text_encoder.parameters()]
    method, _ = setup_esd(adapter, scope="text-encoder", lr=1e-2)
    for i in range(2):
        method.step(*batches(adapter, [CAT] * 2, [CAT] * 2, i))
    assert all(torch.equal(a, b) for a, b in zip(unet, adapter.parameters("all")))
    assert sum(not torch.equal(a, b) for a, b in zip(te, adapter.text_encoder.parameters())) > len(te) // 2
    x, t, _, e_c = naive_trajectory(plain, initial_noise(TRAJ)[:1], CAT)[2]
    torch.testing.assert_close(method.bank.eps_cond[2], e_c[0], atol=1e-5, rtol=1e-4)


def test_rows_are_drawn_for_the_global_batch_and_computed_locally(pipes, monkeypatch):
    """A process computing rows 1–2 of a 4-row batch sees exactly rows 1–2 of the one-process draw."""
    seen = {}
    for key, rows in (("all", slice(None)), ("part", slice(1, 3))):
        adapter, _ = fresh(pipes["epsilon"])
        method, _ = setup_esd(adapter)
        def spy(x, t, y, _predict=adapter.predict, _key=key):
            seen[_key] = x
            return _predict(x, t, y)

        monkeypatch.setattr(adapter, "predict", spy)
        method.step(*batches(adapter, [CAT] * 4, [CAT] * 4, 3, rows))
    assert seen["part"].shape[0] == 2
    torch.testing.assert_close(seen["part"], seen["all"][1:3], atol=0, rtol=0)


# ---------------------------------------------------------------------- state and refresh
def test_checkpoint_round_trip_resumes_bitwise_with_a_refreshed_bank(pipes):
    """3 steps, save (model + method state), resume on a fresh copy: step 4 gives the same weights. With
    refresh_every 2, step 4 runs on the bank of generation 1, which the resumed run rebuilds from θ₀."""
    opts = dict(refresh_every=2, ema_decay=0.5, lr=1e-2)
    a, _ = fresh(pipes["epsilon"])
    m, _ = setup_esd(a, **opts)
    first_bank = m.bank.x_t.clone()
    for i in range(3):
        m.step(*batches(a, [CAT] * 2, [CAT] * 2, i))
    assert not torch.equal(m.bank.x_t, first_bank), "refresh_every=2: step 3 runs on a new bank"
    model_state = {k: v.clone() for k, v in a.state_dict().items()}
    state = copy.deepcopy(m.state_dict())
    assert state["steps"] == 3

    b, _ = fresh(pipes["epsilon"])
    mb, _ = setup_esd(b, **opts)
    b.load_state_dict(model_state)
    mb.load_state_dict(state)
    m.step(*batches(a, [CAT] * 2, [CAT] * 2, 3))
    mb.step(*batches(b, [CAT] * 2, [CAT] * 2, 3))
    torch.testing.assert_close(mb.bank.x_t, m.bank.x_t, atol=0, rtol=0)
    for (n, p), q in zip(a.named_parameters("all"), b.parameters("all")):
        assert torch.equal(p, q), n
    for e, f in zip(m.ema, mb.ema):
        assert torch.equal(e, f)


def test_a_refreshed_bank_comes_from_the_frozen_model_not_the_trained_one(pipes):
    adapter, plain = fresh(pipes["epsilon"])
    method, _ = setup_esd(adapter, refresh_every=1, lr=5e-2)
    method.step(*batches(adapter, [CAT] * 2, [CAT] * 2, 0))
    method.step(*batches(adapter, [CAT] * 2, [CAT] * 2, 1))  # runs on generation 1's bank
    noise = initial_noise(TRAJ, generation=1)
    x, t, e_u, e_c = naive_trajectory(plain, noise[1:2], CAT)[3]
    row = 1 * STEPS + 3
    torch.testing.assert_close(method.bank.x_t[row], x[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(method.bank.eps_cond[row], e_c[0], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- options and refusals
def test_defaults_are_the_authors_sd_ones():
    d = ESD.defaults(family="t2i")
    assert (d["steps"], d["batch_size"], d["lr"], d["scope"]) == (200, 1, 5e-5, "xattn")
    assert methods.parse_options("esd", {}).eta == 1.0


@pytest.mark.parametrize("options,match", [
    ({"eta": -1}, "eta"),
    ({"sampling_guidance": 0.5}, "sampling_guidance"),
    ({"ddim_steps": 0}, "ddim_steps"),
    ({"trajectories": 0}, "trajectories"),
    ({"bank_batch": 0}, "bank_batch"),
    ({"refresh_every": -1}, "refresh_every"),
    ({"retain_weight": -0.1}, "retain_weight"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"adam_beta2": 1.0}, "adam_beta2"),
    ({"erase_from": " a fox"}, "erase_from"),
    ({"eta": "strong"}, "number"),
    ({"guidance": 3}, "unknown option"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(UserInputError, match=match):
        methods.parse_options("esd", options)


def test_refusals_at_setup(pipes, tiny_model_dir):
    from fastunlearn.models.ddpm import load_adapter

    ddpm = load_adapter(str(tiny_model_dir))
    with pytest.raises(UserInputError, match="text-to-image"):
        methods.get("esd")().setup(ddpm, methods.MethodConfig(lr=1e-4, options=methods.parse_options("esd", {}),
                                                              forget_classes=(0,)))
    adapter, _ = fresh(pipes["epsilon"])
    with pytest.raises(UserInputError, match="retain_weight > 0 needs prompts"):
        setup_esd(adapter, retain_weight=1.0)
    with pytest.raises(UserInputError, match="empty prompt"):
        methods.get("esd")().setup(adapter, methods.MethodConfig(
            lr=1e-4, options=methods.parse_options("esd", {}), forget_classes=(0,)))
    with pytest.raises(UserInputError, match="erase_from .* tokens long"):
        setup_esd(adapter, erase_from="a very long prompt that does not fit in the tokenizer")
    with pytest.raises(UserInputError, match="ddim_steps 5000"):
        setup_esd(adapter, ddim_steps=5000)
    method, _ = setup_esd(adapter)
    with pytest.raises(UserInputError, match="no frozen trajectories"):
        method.step(*batches(adapter, [DOG] * 2, [DOG] * 2, 0))
    assert ESD.fsdp_unsupported(methods.parse_options("esd", {"refresh_every": 5}))
    assert ESD.fsdp_unsupported(methods.parse_options("esd", {})) is None
