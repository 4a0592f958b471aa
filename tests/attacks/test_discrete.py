"""UnlearnDiffAtk's pieces against plain references: the simplex projection (bisection on the threshold), the
straight-through argmax, the vocabulary without special tokens, and one attack step (loss, gradient, Adam,
projection) recomputed with plain PyTorch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastunlearn.attacks.discrete import (StraightThroughArgmax, allowed_token_ids, project_simplex,
                                          run_discrete)
from fastunlearn.errors import UserInputError


def bisection_projection(v: np.ndarray) -> np.ndarray:
    """argmin_p ‖p − v‖² on the simplex: p = max(v − θ, 0) with Σ p = 1, θ found by bisection (float64)."""
    lo, hi = float(v.min()) - 1.0, float(v.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(v - mid, 0).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    return np.maximum(v - (lo + hi) / 2, 0)


def test_projection_equals_bisection_reference_on_every_kind_of_row():
    g = torch.Generator().manual_seed(0)
    rows = [
        torch.randn(50, generator=g, dtype=torch.float64),  # generic
        torch.randn(50, generator=g, dtype=torch.float64) * 10,  # far from the simplex
        torch.full((50,), 0.3, dtype=torch.float64),  # all tied
        torch.tensor([0.5, 0.5, 0.5, 0.1] + [0.0] * 46, dtype=torch.float64),  # tied maxima
        torch.softmax(torch.randn(50, generator=g, dtype=torch.float64), 0),  # already on the simplex
        torch.tensor([1.0] + [0.0] * 49, dtype=torch.float64),  # a vertex
        torch.full((50,), 1 / 50, dtype=torch.float64),  # the uniform point (UnlearnDiffAtk's start)
        -torch.rand(50, generator=g, dtype=torch.float64),  # all negative
    ]
    v = torch.stack(rows).reshape(2, 4, 50)  # batched over two leading dimensions (instances × k rows)
    p = project_simplex(v)
    assert p.shape == v.shape and p.dtype == torch.float64
    ref = np.stack([bisection_projection(r.numpy()) for r in v.reshape(-1, 50)]).reshape(2, 4, 50)
    np.testing.assert_allclose(p.numpy(), ref, atol=1e-12)
    assert torch.all(p >= 0) and torch.allclose(p.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    on = v.reshape(-1, 50)[[4, 5, 6]]
    torch.testing.assert_close(project_simplex(on), on, rtol=0, atol=1e-15)  # points of the simplex stay put


def test_projection_float32_batch_matches_reference_and_is_a_minimiser():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 5, 1000, generator=g) * 0.01 + 1e-3  # like Adam-moved distributions over a vocabulary
    p = project_simplex(v)
    assert p.dtype == torch.float32
    ref = np.stack([bisection_projection(r) for r in v.reshape(-1, 1000).double().numpy()]).reshape(3, 5, 1000)
    np.testing.assert_allclose(p.double().numpy(), ref, atol=1e-6)
    # no other point of the simplex is closer: compare with random simplex points
    q = torch.softmax(torch.randn(64, 1000, generator=g), -1)
    d_best = (p[0, 0] - v[0, 0]).square().sum()
    assert torch.all((q - v[0, 0]).square().sum(-1) >= d_best)


def test_projection_refuses_integer_input():
    with pytest.raises(UserInputError):
        project_simplex(torch.ones(3, dtype=torch.long))


def test_straight_through_forward_is_one_hot_and_gradient_reaches_the_distribution():
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(2, 3, 7, generator=g), -1).requires_grad_(True)
    hot = StraightThroughArgmax.apply(p)
    expected = torch.nn.functional.one_hot(p.detach().argmax(-1), 7).float()
    assert torch.equal(hot, expected)  # exactly 0/1: the prompt is a real token sequence
    w = torch.randn(2, 3, 7, generator=g) * 3  # some entries beyond ±1: the gradient is clipped there
    (grad,) = torch.autograd.grad((hot * w).sum(), [p])
    torch.testing.assert_close(grad, w.clamp(-1, 1), rtol=0, atol=0)
    table = torch.randn(7, 4, generator=g)
    emb = hot @ table  # one-hot · E is exactly the token's embedding
    torch.testing.assert_close(emb, table[p.detach().argmax(-1)], rtol=0, atol=0)


def test_straight_through_ties_take_the_first_maximum():
    p = torch.full((1, 5), 0.2)
    assert StraightThroughArgmax.apply(p).argmax(-1).item() == 0


def test_allowed_vocabulary_is_everything_but_the_special_tokens(sd):
    allowed = allowed_token_ids(sd)
    special = set(sd.special_token_ids)
    assert special and special == {sd.tokenizer.bos_token_id, sd.tokenizer.eos_token_id}
    assert set(allowed.tolist()) == set(range(sd.vocab_size)) - special


def _reference_step(adapter, label, z, k, timesteps, seed, lr, weight_decay):
    """One UnlearnDiffAtk step on one instance, in plain PyTorch: the loss and the projected distribution."""
    special = set(adapter.special_token_ids)
    allowed = torch.tensor([i for i in range(adapter.vocab_size) if i not in special])
    vocab = allowed.numel()
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (timesteps,), generator=g)
    eps = torch.randn((timesteps, *z.shape), generator=g)
    ab = adapter.scheduler.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * z + (1 - ab).sqrt() * eps
    p0 = torch.full((k, vocab), 1.0 / vocab)
    hot = torch.nn.functional.one_hot(p0.argmax(-1), vocab).float().requires_grad_(True)
    table = adapter.text_encoder.get_input_embeddings().weight.detach()[allowed]
    # the prefixed prompt [BOS, prefix, prompt tokens, EOS, pad], through the encoder's own embedding path
    tok = adapter.tokenizer([adapter.prompt(int(label))], padding="max_length", max_length=adapter.max_prompt_tokens,
                            return_tensors="pt").input_ids[0]
    ids = torch.cat([tok[:1], torch.zeros(k, dtype=torch.long), tok[1:len(tok) - k]])
    te = adapter.text_encoder
    embeds = te.get_input_embeddings()(ids[None]).detach()
    embeds = torch.cat([embeds[:, :1], (hot @ table)[None], embeds[:, 1 + k:]], 1)
    h = te.embeddings(inputs_embeds=embeds)
    L = ids.numel()
    causal = torch.full((L, L), float("-inf")).triu(1)[None, None]
    states = te.final_layer_norm(te.encoder(inputs_embeds=h, attention_mask=causal).last_hidden_state)
    pred = adapter.unet(x_t, t, encoder_hidden_states=states.expand(timesteps, -1, -1)).sample
    loss = (pred - eps).square().mean()
    (g_hot,) = torch.autograd.grad(loss, [hot])
    p = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr, weight_decay=weight_decay)
    p.grad = g_hot.clamp(-1, 1)
    opt.step()
    projected = np.stack([bisection_projection(r) for r in p.detach().double().numpy()])
    return float(loss.detach()), projected, allowed


def test_one_attack_step_equals_the_plain_pytorch_reference(sd):
    label = sd.prompt_ids(["a cat"])
    z = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(3))
    seed, k, timesteps = 11, 2, 3
    out = run_discrete(sd, label, z[None], torch.randn(1, 4, 8, 8), [torch.Generator().manual_seed(seed)],
                       lambda imgs: torch.zeros(imgs.shape[0], dtype=torch.bool), k, iterations=1,
                       timesteps=timesteps, check_every=1, lr=0.01, weight_decay=0.1, steps=2)
    loss, projected, allowed = _reference_step(sd, label, z, k, timesteps, seed, lr=0.01, weight_decay=0.1)
    assert math.isclose(float(out.loss[0]), loss, rel_tol=1e-5)
    assert torch.equal(out.allowed, allowed)
    np.testing.assert_allclose(out.relaxed[0].double().numpy(), projected, atol=1e-6)
    assert not bool(out.success[0]) and int(out.iterations[0]) == 1
    assert set(out.token_ids.reshape(-1).tolist()) <= set(allowed.tolist())


def test_chosen_tokens_are_never_special_and_success_stops_an_instance(sd):
    labels = sd.prompt_ids(["a cat", "a dog", "a cat"])
    calls = []

    def judge(images):  # instance rows succeed at the second check only
        calls.append(images.shape[0])
        return torch.full((images.shape[0],), len(calls) == 2)

    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = run_discrete(sd, labels, torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), gens, judge, k=3,
                       iterations=6, timesteps=2, check_every=2, steps=2)
    assert calls == [3, 3]  # everyone stopped at the second check: no third one
    assert out.success.tolist() == [True] * 3 and out.iterations.tolist() == [4] * 3
    special = set(sd.special_token_ids)
    assert not special & set(out.token_ids.reshape(-1).tolist())
    torch.testing.assert_close(out.relaxed.sum(-1), torch.ones(3, 3))
    assert out.images.shape == (3, 3, 16, 16) and out.images.abs().max() <= 1


def test_run_discrete_refuses_bad_settings(sd):
    label = sd.prompt_ids(["a cat"])
    with pytest.raises(UserInputError, match="iterations"):
        run_discrete(sd, label, torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), [torch.Generator()],
                     lambda x: torch.zeros(x.shape[0], dtype=torch.bool), k=1, iterations=0)
