"""The authors'-loop ESD reference (``benchmarks/reference_esd.py``) computes their update: one iteration checked
against an independent computation on a tiny Stable Diffusion — diffusers' ``DDIMScheduler.step`` with two separate
UNet calls per step on the model being trained, ``encode_prompt`` embeddings, plain autograd and ``torch.optim.Adam``
— for a draw that runs the whole prefix (t_enc = 0) and one that stops early."""
import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from fastunlearn.models.tiny_sd import build_tiny_sd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference_esd import ReferenceESD  # noqa: E402

S, PROMPT, ETA, LR = 10, "a cat", 1.0, 1e-3


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def encode(pipe, prompt):
    return pipe.encode_prompt(prompt, torch.device("cpu"), 1, False)[0]


def seed_with(t_enc: int) -> int:
    """A generator seed whose iteration draws ``t_enc`` (their draw order: prompt index, then t_enc)."""
    for seed in range(10_000):
        g = torch.Generator().manual_seed(seed)
        torch.randint(1, (1,), generator=g)
        if int(torch.randint(S, (1,), generator=g)) == t_enc:
            return seed
    raise AssertionError(t_enc)


@pytest.mark.parametrize("t_enc", [0, 4])
def test_one_iteration_equals_an_independent_computation(t_enc):
    pipe = build_tiny_sd(seed=0)
    frozen = copy.deepcopy(pipe.unet)
    ref = ReferenceESD().setup(copy.deepcopy(pipe.unet), pipe.text_encoder, pipe.tokenizer, pipe.scheduler, [PROMPT],
                               train_method="xattn", lr=LR, negative_guidance=ETA, ddim_steps=S)
    # The model being trained moves off θ₀ first, so sampling with it differs from sampling with the frozen copy.
    trained = copy.deepcopy(pipe.unet)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for (n, p), q in zip(ref.unet.named_parameters(), trained.parameters()):
            if "attn2" in n:
                delta = 0.2 * p.abs().mean() * torch.randn(p.shape, generator=g)
                p.add_(delta), q.add_(delta)
    calls = {"trained": 0, "frozen": 0}
    ref.unet.register_forward_hook(lambda *a: calls.__setitem__("trained", calls["trained"] + 1))
    ref.frozen.register_forward_hook(lambda *a: calls.__setitem__("frozen", calls["frozen"] + 1))
    seed = seed_with(t_enc)
    ref.step(torch.Generator().manual_seed(seed))

    # The same draws, then their loop by independent means.
    gen = torch.Generator().manual_seed(seed)
    torch.randint(1, (1,), generator=gen)
    assert int(torch.randint(S, (1,), generator=gen)) == t_enc
    t_ddpm = int(torch.randint(round(t_enc / S * 1000), round((t_enc + 1) / S * 1000), (1,), generator=gen))
    x = torch.randn((1, 4, 8, 8), generator=gen)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)  # steps_offset 1: 901, 801, …, 1 at S = 10
    sched.set_timesteps(S)
    run = sched.timesteps[1:]  # their sampler skips the first (largest) timestep ...
    run = run[:S - t_enc] if t_enc else run  # ... and stops after S − t_enc steps (all S − 1 when t_enc = 0)
    empty, cat = encode(pipe, ""), encode(pipe, PROMPT)
    with torch.no_grad():
        for t in run:
            u = trained(x, t, encoder_hidden_states=empty).sample
            c = trained(x, t, encoder_hidden_states=cat).sample
            x = sched.step(u + 3.0 * (c - u), t, x).prev_sample
        tt = torch.tensor([t_ddpm])
        e_0 = frozen(x, tt, encoder_hidden_states=empty).sample
        e_p = frozen(x, tt, encoder_hidden_states=cat).sample
    names = [n for n, _ in trained.named_parameters() if "attn2" in n]
    opt = torch.optim.Adam([p for n, p in trained.named_parameters() if n in names], lr=LR)
    F.mse_loss(trained(x, tt, encoder_hidden_states=cat).sample, e_0 - ETA * (e_p - e_0)).backward()
    opt.step()

    assert calls == {"trained": len(run) + 1, "frozen": 2}  # one [uncond; cond] call per prefix step, then e_n
    got = dict(ref.unet.named_parameters())
    scale = max(float(p.grad.abs().max()) for n, p in trained.named_parameters() if n in names)
    for n, p in trained.named_parameters():
        if n in names:
            torch.testing.assert_close(got[n].grad, p.grad, atol=1e-5 * scale, rtol=1e-4)
            sure = p.grad.abs() > 1e-5  # Adam's first step is ≈ lr·sign(g) only where |g| ≫ its ε
            torch.testing.assert_close(got[n].detach()[sure], p.detach()[sure], atol=1e-2 * LR, rtol=0)
        else:
            assert torch.equal(got[n], dict(frozen.named_parameters())[n]), n

