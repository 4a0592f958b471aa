"""The authors'-default reference (``benchmarks/reference_erasediff.py``) computes their update and follows their
schedule: checked against a plain autograd computation on an independent copy of the model and against the
step counts METHODS.md gives for their CIFAR-10 run (640 inner + 288 outer Adam steps)."""
import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import reference_erasediff  # noqa: E402
from reference_erasediff import ReferenceEraseDiffDefault, authors_schedule  # noqa: E402

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def no_gc_collect(monkeypatch):
    """The reference's ``gc.collect()`` calls are part of its cost, not of its arithmetic: a full collection of this
    process's heap takes ~0.3–0.9 s here, so the tests leave them out."""
    monkeypatch.setattr(reference_erasediff.gc, "collect", lambda *a, **k: 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: a second OpenMP thread only waits (25× slower on a loaded 2-core box)
    yield
    torch.set_num_threads(threads)

T = 1000
RETAINED = list(range(1, 10))


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=11)


def sched():
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def test_authors_schedule_matches_their_cifar10_run():
    s = authors_schedule(5000, 128)  # one class of CIFAR-10, batch 128, K = 2, rem_num 4500
    assert (s["forget_batches"], s["inner_steps_per_round"], s["outer_per_round"]) == (40, 80, 36)
    assert 4 * 2 * s["inner_steps_per_round"] == 640 and 4 * 2 * s["outer_per_round"] == 288  # 4 epochs × S = 2
    d = authors_schedule(142, 32)  # the digits forget class: the loop stops when D_f runs out
    assert (d["inner_steps_per_round"], d["outer_per_round"]) == (10, 5)
    assert d["inner_per_outer"] == pytest.approx(2 * 142 / 32 / 5)


def _draw(x0, gen):
    n = x0.shape[0]
    half = torch.randint(0, T, (n // 2 + 1,), generator=gen)
    t = torch.cat([half, T - half - 1])[:n]
    noise = torch.randn(x0.shape, generator=gen)
    a = sched().alphas_cumprod[t].view(n, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise


def test_outer_step_gradient_is_lr_plus_lambda_lq_by_plain_autograd():
    """One backward of L_r + 0.1·L_u, the pseudo-label target detached: the gradient the reference leaves in
    ``.grad`` equals plain autograd of that loss on an independent copy of the model."""
    unet = tiny_unet()
    plain = copy.deepcopy(unet)
    ref = ReferenceEraseDiffDefault().setup(unet, sched(), RETAINED, grad_clip=0.0, ema_decay=0.0)
    g = torch.Generator().manual_seed(3)
    fx, rx = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    fy, ry = torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 4])
    ref.outer_step(fx, fy, rx, ry, torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(7)  # the same draws, in the reference's order: retain, forget, c′
    x_r, t_r, n_r = _draw(rx, gen)
    loss_r = F.mse_loss(plain(x_r, t_r, class_labels=ry).sample, n_r)
    x_f, t_f, _ = _draw(fx, gen)
    c = torch.tensor(RETAINED)[torch.randint(0, len(RETAINED), (1,), generator=gen)].item()
    with torch.no_grad():
        target = plain(x_f, t_f, class_labels=torch.full((4,), c)).sample
    loss_u = F.mse_loss(plain(x_f, t_f, class_labels=fy).sample, target)
    want = torch.autograd.grad(loss_r + 0.1 * loss_u, list(plain.parameters()))
    for (name, p), w in zip(unet.named_parameters(), want):
        assert torch.allclose(p.grad, w, rtol=1e-4, atol=1e-7), name
    assert sum(float(w.abs().sum()) for w in want) > 0


def test_step_runs_their_rounds_on_the_live_optimizer():
    """``step`` runs K = 2 passes over the forget set when a round is due (first call, then every
    ``outer_per_round`` calls), on the live Adam, and restores θ before the outer step."""
    unet = tiny_unet()
    g = torch.Generator().manual_seed(0)
    forget = torch.rand(10, 1, 8, 8, generator=g) * 2 - 1
    ref = ReferenceEraseDiffDefault().setup(unet, sched(), RETAINED, forget_images=forget,
                                            forget_labels=torch.zeros(10, dtype=torch.long), batch=4, ema_decay=0.0)
    assert ref.schedule["outer_per_round"] == 3 and ref.schedule["inner_steps_per_round"] == 6

    before = [p.detach().clone() for p in unet.parameters()]
    taken = ref.run_inner_passes(torch.Generator().manual_seed(1))
    assert taken == 6
    for p, b in zip(unet.parameters(), before):
        assert torch.equal(p, b)  # θ restored after the inner passes ...
    state = ref.optimizer.state[next(iter(unet.parameters()))]
    assert int(state["step"]) == 6 and float(state["exp_avg"].abs().sum()) > 0  # ... Adam's moments not

    ref = ReferenceEraseDiffDefault().setup(tiny_unet(), sched(), RETAINED, forget_images=forget,
                                            forget_labels=torch.zeros(10, dtype=torch.long), batch=4, ema_decay=0.0)
    fy, ry = torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 4])
    inner = [ref.step(forget[:4], fy, forget[4:8], ry, torch.Generator().manual_seed(i))["inner_steps"] for i in range(7)]
    assert inner == [6, 0, 0, 6, 0, 0, 6]
    assert int(ref.optimizer.state[next(iter(ref.unet.parameters()))]["step"]) == 3 * 6 + 7
