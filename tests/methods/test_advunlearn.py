"""AdvUnlearn on a tiny offline Stable Diffusion pipeline (CLIP text encoder).

The numerical check compares with an independent path: the bank rows re-run with raw diffusers calls on an
untouched copy of the pipeline (test_esd's ``naive_trajectory``), prompts with an adversarial prefix encoded by
hand as the authors' custom CLIP encoder does (token embeddings with the prefix spliced in after BOS → the
embeddings module on ``inputs_embeds`` → the encoder under an explicit causal mask → the final layer norm), the
attack as a plain ``torch.optim.Adam`` loop on the prefix, and the update as plain autograd + Adam over the text
encoder's layers picked by name here — never the method's own intermediates.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_esd import CAT, DOG, FOX, STEPS, TRAJ, encode, initial_noise, naive_trajectory

from fastunlearn.errors import UserInputError
from fastunlearn.methods import base as methods
from fastunlearn.methods.advunlearn import AdvUnlearn, default_retain_prompts
from fastunlearn.models import load_model
from fastunlearn.models.tiny_sd import build_tiny_sd


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sd(seed=0)


def setup_adv(adapter, forget=(CAT,), retain=(DOG, FOX), lr=1e-3, scope="text-encoder", **options):
    options = {"trajectories": TRAJ, "retain_trajectories": TRAJ, "ddim_steps": STEPS, "warmup": 0, **options}
    ids = adapter.prompt_ids(list(forget) + list(retain))
    method = methods.get("advunlearn")()
    method.setup(adapter, methods.MethodConfig(
        lr=lr, options=methods.parse_options("advunlearn", options), scope=scope,
        forget_classes=tuple(ids[:len(forget)].tolist()), retain_classes=tuple(ids[len(forget):].tolist())))
    return method


def batch(adapter, prompts, seed):
    g = torch.Generator().manual_seed(seed)
    b = methods.Batch(torch.zeros(len(prompts), 0), adapter.prompt_ids(list(prompts)), g)
    return b, methods.Batch(torch.zeros(1, 0), adapter.prompt_ids([DOG]), g)


# ---------------------------------------------------------------------- the independent path
def clip_states(pipe, prompt, prefix=None):
    """CLIP token states of ``prompt`` with ``prefix`` [k, D] spliced in after BOS, by hand."""
    te, tok = pipe.text_encoder, pipe.tokenizer
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    emb = te.embeddings.token_embedding(ids)
    if prefix is not None:
        k = prefix.shape[0]
        emb = torch.cat([emb[:, :1], prefix[None], emb[:, 1:ids.shape[1] - k]], 1)
    hidden = te.embeddings(inputs_embeds=emb)
    L = hidden.shape[1]
    causal = torch.full((L, L), float("-inf")).triu(1)[None, None]
    return te.final_layer_norm(te.encoder(inputs_embeds=hidden, attention_mask=causal).last_hidden_state)


def trained_names(pipe):
    return [n for n, _ in pipe.text_encoder.named_parameters()
            if n.startswith("encoder.layers.") or n.startswith("final_layer_norm.")]


def test_prefixed_encoding_equals_the_hand_built_clip_path(pipe):
    adapter = load_model(copy.deepcopy(pipe))
    ids = adapter.prompt_ids([CAT])
    prefix = torch.randn(2, adapter.token_embedding.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(adapter.encode_prefixed(ids, prefix), clip_states(pipe, CAT, prefix),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(adapter.encode_prefixed(ids, prefix[:0]), encode(pipe, CAT), atol=1e-6, rtol=0)


@pytest.mark.parametrize("gamma,attack_steps,mode", [(0.5, 3, "pgd"), (0.0, 2, "fast_at")])
def test_one_iteration_equals_plain_attack_then_autograd_and_adam(pipe, gamma, attack_steps, mode):
    """Iteration 0 after warm-up: a random-token prefix, ``attack_steps`` steps of the attack on an attack batch
    (fit to ε₀(x_t, c)), then Adam on ∇ of mean ‖ε(x_t, TE_θ(P ⊕ c)) − ESD target‖² + γ mean ‖ε(x_r, TE_θ(c_r)) −
    ε₀(x_r, c_r)‖² over the encoder's layers and final layer norm only."""
    lr, attack_lr, eta, seed, n, n_r = 1e-3, 5e-2, 1.5, 7, 2, 3
    adapter = load_model(copy.deepcopy(pipe))
    plain, frozen = copy.deepcopy(pipe), copy.deepcopy(pipe)
    method = setup_adv(adapter, lr=lr, eta=eta, gamma=gamma, attack_steps=attack_steps, attack_lr=attack_lr,
                       attack=mode, attack_tokens=2, retain_batch=n_r)
    # θ moved off θ₀ (the banks stay θ₀'s): at θ₀ the retain term and its gradient are exactly zero.
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ours = dict(adapter.text_encoder.named_parameters())
        for nme, q in plain.text_encoder.named_parameters():
            if nme in trained_names(plain):
                delta = 0.05 * q.abs().mean() * torch.randn(q.shape, generator=g)
                q.add_(delta), ours[nme].add_(delta)
    start = {nme: q.detach().clone() for nme, q in plain.text_encoder.named_parameters()}
    unet_before = [p.detach().clone() for p in adapter.parameters("all")]
    emb_before = adapter.token_embedding.clone()
    method.step(*batch(adapter, [CAT] * n, seed))

    # The draws, in the method's documented order, from one step generator.
    g = torch.Generator().manual_seed(seed)
    per = TRAJ * STEPS
    attack_rows = torch.randint(0, per, (n,), generator=g)
    special = set(pipe.tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(pipe.text_encoder.config.vocab_size) if i not in special])
    init = pipe.text_encoder.embeddings.token_embedding.weight.detach()[
        allowed[torch.randint(0, allowed.numel(), (2,), generator=g)]].clone()
    train_rows = torch.randint(0, per, (n,), generator=g)
    retain_order = sorted([DOG, FOX], key=lambda q: int(adapter.prompt_ids([q])[0]))
    r_prompts = torch.randint(0, 2, (n_r,), generator=g) if gamma else torch.zeros(0, dtype=torch.long)
    r_rows = torch.randint(0, per, (n_r,), generator=g) if gamma else torch.zeros(0, dtype=torch.long)

    noise_f, noise_r = initial_noise(TRAJ, side=0), initial_noise(2 * TRAJ, side=1)
    cat_traj = [naive_trajectory(frozen, noise_f[j:j + 1], CAT) for j in range(TRAJ)]
    row = lambda traj, w: traj[int(w) // STEPS][int(w) % STEPS]  # noqa: E731

    # the attack, plain: Adam (or signed steps) on the prefix, TE and UNet as they are (θ₀ here)
    prefix = init.clone().requires_grad_(True)
    opt_p = torch.optim.Adam([prefix], lr=attack_lr)
    xa = [row(cat_traj, w) for w in attack_rows]
    for _ in range(attack_steps):
        pred = torch.cat([plain.unet(x, t, encoder_hidden_states=clip_states(plain, CAT, prefix)).sample
                          for x, t, _, _ in xa])
        loss = F.mse_loss(pred, torch.cat([e_c for _, _, _, e_c in xa]))
        (grad,) = torch.autograd.grad(loss, [prefix])
        if mode == "pgd":
            prefix.grad = grad
            opt_p.step()
        else:
            with torch.no_grad():
                prefix.sub_(attack_lr * grad.sign())
    torch.testing.assert_close(method.prefix, prefix.detach(), atol=1e-5, rtol=1e-4)

    # the training step, plain
    names = trained_names(plain)
    params = [p for nme, p in plain.text_encoder.named_parameters() if nme in names]
    opt = torch.optim.Adam(params, lr=lr)
    prefix = prefix.detach()
    preds, targets = [], []
    for w in train_rows:
        x, t, e_u, e_c = row(cat_traj, w)
        preds.append(plain.unet(x, t, encoder_hidden_states=clip_states(plain, CAT, prefix)).sample)
        targets.append(e_u - eta * (e_c - e_u))
    loss = F.mse_loss(torch.cat(preds), torch.cat(targets))
    if gamma:
        rp, rt = [], []
        for pi, w in zip(r_prompts, r_rows):
            prompt = retain_order[int(pi)]
            j = int(pi) * TRAJ + int(w) // STEPS
            x, t, _, e_r = naive_trajectory(frozen, noise_r[j:j + 1], prompt)[int(w) % STEPS]
            rp.append(plain.unet(x, t, encoder_hidden_states=clip_states(plain, prompt)).sample)
            rt.append(e_r)
        loss = loss + gamma * F.mse_loss(torch.cat(rp), torch.cat(rt))
    loss.backward()
    opt.step()

    trained = dict(adapter.text_encoder.named_parameters())
    scale = max(float(p.grad.abs().max()) for p in params)
    moved = 0
    for nme, p in plain.text_encoder.named_parameters():
        if nme in names:
            torch.testing.assert_close(trained[nme].grad, p.grad, atol=1e-5 * scale, rtol=1e-3)
            sure = p.grad.abs() > 1e-4 * scale
            torch.testing.assert_close(trained[nme].detach()[sure], p.detach()[sure], atol=1e-2 * lr, rtol=0)
            moved += not torch.equal(trained[nme], start[nme])
        else:
            assert torch.equal(trained[nme], p), f"{nme} is outside the scope but changed"
    assert moved > 0
    # the UNet is frozen and gets no gradient at all; the token embeddings stay
    assert all(torch.equal(a, b) for a, b in zip(unet_before, adapter.parameters("all")))
    assert all(p.grad is None for p in adapter.parameters("all"))
    assert torch.equal(adapter.token_embedding, emb_before)


def test_warmup_trains_without_attack_and_attack_every_reuses_the_prefix(pipe):
    adapter = load_model(copy.deepcopy(pipe))
    method = setup_adv(adapter, warmup=2, attack_every=2, attack_steps=1, lr=1e-2)
    calls = []
    original = method.attack
    method.attack = lambda b: (calls.append(method._steps), original(b))[1]
    for i in range(6):
        method.step(*batch(adapter, [CAT], i))
    assert calls == [2, 4]


def test_first_k_layers_scope_and_resume_is_bitwise(pipe):
    """text-encoder:1 trains layer 0 only; 3 iterations, state saved, the 4th on a resumed copy is identical."""
    a = load_model(copy.deepcopy(pipe))
    m = setup_adv(a, scope="text-encoder:1", warmup=1, attack_steps=2, lr=1e-2)
    before = {n: p.detach().clone() for n, p in a.text_encoder.named_parameters()}
    for i in range(3):
        m.step(*batch(a, [CAT], i))
    for n, p in a.text_encoder.named_parameters():
        assert torch.equal(p, before[n]) != n.startswith("encoder.layers.0."), n
    model_state = {k: v.clone() for k, v in a.state_dict().items()}
    state = copy.deepcopy(m.state_dict())
    b = load_model(copy.deepcopy(pipe))
    mb = setup_adv(b, scope="text-encoder:1", warmup=1, attack_steps=2, lr=1e-2)
    b.load_state_dict(model_state)
    mb.load_state_dict(state)
    m.step(*batch(a, [CAT], 3))
    mb.step(*batch(b, [CAT], 3))
    torch.testing.assert_close(mb.prefix, m.prefix, atol=0, rtol=0)
    for (n, p), q in zip(a.text_encoder.named_parameters(), b.text_encoder.parameters()):
        assert torch.equal(p, q), n


def test_saved_text_encoder_is_plug_and_play(pipe, tmp_path):
    """The run's text_encoder/ dropped into the BASE pipeline (stock diffusers/transformers, no fastunlearn)
    gives the unlearned model's predictions; the base encoder does not."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    base_dir = tmp_path / "base"
    pipe.save_pretrained(base_dir)
    adapter = load_model(str(base_dir))
    method = setup_adv(adapter, warmup=1, attack_steps=2, lr=5e-2)
    for i in range(3):
        method.step(*batch(adapter, [CAT], i))
    out = adapter.save_pretrained(tmp_path / "out")
    base = StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None)
    swapped = StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None,
                                                      text_encoder=CLIPTextModel.from_pretrained(out / "text_encoder"))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 20])
    with torch.no_grad():
        ours = adapter.predict(x, t, adapter.prompt_ids([CAT, CAT]))
        plug = swapped.unet(x, t, encoder_hidden_states=encode(swapped, CAT).expand(2, -1, -1)).sample
        orig = base.unet(x, t, encoder_hidden_states=encode(base, CAT).expand(2, -1, -1)).sample
    torch.testing.assert_close(plug, ours, atol=1e-5, rtol=1e-5)
    assert (orig - ours).abs().max() > 1e-3
    # the UNet is unchanged on disk too
    from safetensors.torch import load_file

    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    for n, p in base.unet.named_parameters():
        assert torch.equal(saved[n], p.detach()), n


# ---------------------------------------------------------------------- options and refusals
def test_defaults_are_the_authors_sd_ones():
    d = AdvUnlearn.defaults(family="t2i")
    assert (d["steps"], d["batch_size"], d["lr"], d["scope"]) == (1000, 1, 1e-5, "text-encoder")
    o = methods.parse_options("advunlearn", {})
    assert (o.attack_tokens, o.attack_steps, o.attack_lr, o.warmup, o.gamma, o.retain_batch, o.attack) == \
        (1, 30, 1e-3, 200, 0.5, 5, "pgd")
    shipped = default_retain_prompts()
    assert len(shipped) == 80 and "a photo of a dog" in shipped and len(set(shipped)) == 80


@pytest.mark.parametrize("options,match", [
    ({"gamma": -1}, "gamma"), ({"attack": "fgsm"}, "attack"), ({"attack_init": "zero"}, "attack_init"),
    ({"attack_tokens": 0}, "attack_tokens"), ({"attack_every": 0}, "attack_every"), ({"warmup": -1}, "warmup"),
    ({"attack_lr": 0}, "attack_lr"), ({"retain_trajectories": 0}, "retain_trajectories"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(UserInputError, match=match):
        methods.parse_options("advunlearn", options)


def test_refusals(pipe):
    adapter = load_model(copy.deepcopy(pipe))
    with pytest.raises(UserInputError, match="--scope must be text-encoder"):
        setup_adv(adapter, scope="xattn")
    with pytest.raises(UserInputError, match="scope 'text-encoder:9'"):
        setup_adv(adapter, scope="text-encoder:9")
    with pytest.raises(UserInputError, match="retain regulariser needs prompts"):
        setup_adv(adapter, retain=())
    long_prompt = "a " * 24 + "cat"  # 29 of the tiny tokenizer's 32 tokens: room for 3 prefix tokens, not 4
    assert len(adapter.tokenizer(long_prompt).input_ids) == 29
    setup_adv(adapter, forget=(long_prompt,), attack_tokens=3)
    with pytest.raises(UserInputError, match="no room for 4 prefix tokens"):
        setup_adv(adapter, forget=(long_prompt,), attack_tokens=4)
