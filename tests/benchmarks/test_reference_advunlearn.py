"""The authors'-loop AdvUnlearn reference (``benchmarks/reference_advunlearn.py``) costs what their loop costs and
trains what their loop trains, on a tiny Stable Diffusion: UNet calls counted by the test's own hooks against the
call formula worked out by hand (batched and split CFG), UNet weight gradients computed, the text encoder's
layers trained and its embeddings not, and the in-loop attack's prefix fitted downhill — its first loss and its
accumulated gradient checked against the adapter's own prefix encoding and plain autograd."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastunlearn.models import load_model
from fastunlearn.models.tiny_sd import build_tiny_sd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference_advunlearn import ReferenceAdvUnlearn, expected_unet_calls, unet_calls  # noqa: E402

CONCEPT, RETAIN = "a cat", ["a dog", "a car", "a tree"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    adapter = load_model(build_tiny_sd(seed=0))
    return adapter, adapter.prompt_ids([CONCEPT]), adapter.prompt_ids(RETAIN)


def reference(tiny, **options):
    adapter, concept, retain = tiny
    base = dict(attack_steps=2, retain_batch=2, ddim_steps=2, warmup_iter=1, lr=1e-3)
    return ReferenceAdvUnlearn().setup(adapter, concept, retain, **{**base, **options})


def counted(module):
    """The test's own counter: (calls, rows) of ``module``'s forwards."""
    seen = {"calls": 0, "rows": 0}

    def hook(mod, args, kwargs):
        seen["calls"] += 1
        seen["rows"] += int(args[0].shape[0])

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("cfg, warm_calls, attack_calls", [("batched", 7, 15), ("split", 9, 19)])
def test_unet_calls_per_iteration_follow_their_loop(tiny, cfg, warm_calls, attack_calls):
    """At S = 2 every prefix is one DDIM step (S − 1 at t_enc 0, S − t_enc at 1), so the counts are fixed. A
    warm-up iteration: concept prefix (1 call batched / 2 split), e_0, e_p, retain prefix (1 / 2), retain_e_p,
    e_n, retain_e_n. An attacking one adds, per attack step (N = 2): prefix (1 / 2), e_0, e_p, e_n. Rows: a guided
    step is 2 rows per prompt; B = 2 retain prompts: 2 + 2 + 4 + 2 + 1 + 2 = 13, plus 2 × (2 + 3) = 23."""
    ref = reference(tiny, cfg=cfg)
    model, frozen = counted(ref.model.unet), counted(ref.frozen.unet)
    te, te0 = counted(ref.model.text_encoder), counted(ref.frozen.text_encoder)
    g = torch.Generator().manual_seed(0)
    for attacked, calls, rows, text in ((False, warm_calls, 13, 7), (True, attack_calls, 23, 11)):
        for c in (model, frozen, te, te0):
            c.update(calls=0, rows=0)
        ref.step(g)
        got = (model["calls"] + frozen["calls"], model["rows"] + frozen["rows"], te["calls"] + te0["calls"])
        assert got == (calls, rows, text), (attacked, got)
        assert (ref.last.attacked, ref.last.unet_calls, ref.last.unet_rows, ref.last.text_calls) == \
               (attacked, calls, rows, text)
        assert frozen["calls"] == 2 * len(ref.last.attack_prefix) + 3  # e_0, e_p per attack step; e_0, e_p, retain_e_p
    # Longer prefixes (S = 6): the count follows the formula for the lengths drawn, and at their defaults
    # (S = 50: E[p] = (49 + 49·50/2) / 50 = 25.48, N = 30, B = 5) an attacking iteration is 910.36 calls
    # (30·28.48 + 2·25.48 + 5) batched, 1,725.72 split, of 1,937.56 rows either way.
    ref = reference(tiny, cfg=cfg, ddim_steps=6, warmup_iter=0, attack_steps=3)
    model, frozen = counted(ref.model.unet), counted(ref.frozen.unet)
    ref.step(torch.Generator().manual_seed(3))
    s = ref.last
    assert len(set(s.attack_prefix + [s.train_prefix])) > 1, "the draws should vary the prefix length"
    assert (model["calls"] + frozen["calls"], model["rows"] + frozen["rows"]) == \
           unet_calls(s.attack_prefix, s.train_prefix, 2, cfg)
    calls, rows = expected_unet_calls(30, 50, 5, cfg)
    assert calls == pytest.approx(910.36 if cfg == "batched" else 1725.72)
    assert rows == pytest.approx(1937.56)


def test_unet_weight_gradients_are_computed(tiny):
    """Their ``model``'s UNet keeps ``requires_grad=True``: the attack's and the training step's backward passes
    compute (and accumulate) a gradient for every UNet weight; the frozen copy gets none."""
    ref = reference(tiny, warmup_iter=0)
    ref.step(torch.Generator().manual_seed(1))
    grads = [p.grad for p in ref.model.unet.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in ref.frozen.unet.parameters())


def test_text_encoder_layers_train_and_embeddings_do_not(tiny):
    """The scope ``text-encoder`` (their ``text_encoder_full``): every layer and the final layer norm move; the
    token and position embeddings get gradients during training but are not in the optimizer, so they stay; the
    caller's adapter is untouched."""
    adapter = tiny[0]
    before = {n: p.detach().clone() for n, p in adapter.text_encoder.named_parameters()}
    ref = reference(tiny)
    g = torch.Generator().manual_seed(2)
    ref.step(g)  # warm-up
    ref.step(g)  # attacking
    trained = dict(ref.model.text_encoder.named_parameters())
    embeddings = [n for n in before if "embeddings." in n]
    assert embeddings and all(torch.equal(trained[n], before[n]) for n in embeddings), \
        [n for n in embeddings if not torch.equal(trained[n], before[n])]
    scope = [n for n in before if ".layers." in n or "final_layer_norm" in n]
    assert len(scope) + len(embeddings) == len(before)
    assert all(not torch.equal(trained[n], before[n]) for n in scope), \
        [n for n in scope if torch.equal(trained[n], before[n])]
    assert all(torch.equal(p, before[n]) for n, p in adapter.text_encoder.named_parameters())


def test_attack_fits_the_prefix_downhill_on_a_fixed_x_t(tiny):
    """Their attack steps on one fixed x_t (their code redraws it every step): the loss ‖ε(z, t, TE(adv ⊕ c)) −
    ε₀(z, t, c)‖² falls. The first loss equals the adapter's own prefix encoding through the UNet (a separate code
    path from the reference's one-hot product and hook), and — their loop never zeroes it — the slot's gradient
    after two steps is the sum of both steps' plain-autograd gradients."""
    adapter, concept, _ = tiny
    ref = reference(tiny)  # their attack_lr 1e-3
    ref.word = int(concept[0])
    ref.emb_p = ref.encode_frozen([ref.word])
    g = torch.Generator().manual_seed(4)
    _, t_ddpm, (start,) = ref.draw(g)
    t = torch.tensor([t_ddpm])
    with torch.no_grad():
        z = ref.sample_till(ref.emb_p, start, 0)
        target = ref.frozen.predict_embedded(z, t, ref.emb_p)
    prompt = ref.prompt([ref.word], ref.k)
    adv = ref.init_adv(g)
    opt = torch.optim.Adam([adv], lr=ref.attack_lr)

    def plain(value):
        """(loss, ∂loss/∂slot) through the adapter's prefix encoding and the UNet, by plain autograd."""
        p = value.detach().clone().requires_grad_(True)
        states = adapter.encode_prefixed(concept, p, grad=True)
        loss = F.mse_loss(adapter.unet(z, t, encoder_hidden_states=states).sample, target)
        return loss.detach(), torch.autograd.grad(loss, [p])[0]

    first_loss, first_grad = plain(adv)
    losses = []
    for step in range(8):
        if step == 1:
            _, second_grad = plain(adv)
        loss, _ = ref.attack_step(adv, opt, prompt, z, t, target)
        losses.append(float(loss))
        if step == 0:
            torch.testing.assert_close(loss, first_loss, rtol=1e-5, atol=1e-7)
        if step == 1:
            torch.testing.assert_close(adv.grad, first_grad + second_grad, rtol=1e-4, atol=1e-8)
    assert losses[-1] < 0.7 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 6, losses
