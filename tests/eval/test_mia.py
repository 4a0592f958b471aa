"""Loss-based membership inference: the AUC reads the right way on toys with a known answer."""
from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from fastunlearn.eval.mia import denoising_losses, heldout_non_members, membership_auc


class ZeroMemoriser:
    """A 'model' that has memorised the all-zero image: ε̂(x_t, t) = x_t / √(1−ᾱ_t), exact when x₀ = 0.

    Its loss grows with ‖x₀‖, so images close to zero behave like training members.
    """

    conditional = False
    device = torch.device("cpu")

    def __init__(self):
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)

    def predict(self, x_t, t, labels=None):
        s = (1 - self.scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        return x_t / s


def test_members_with_lower_loss_give_high_auc():
    g = torch.Generator().manual_seed(0)
    members = 0.05 * torch.randn(100, 1, 8, 8, generator=g)
    non_members = 0.5 * torch.randn(100, 1, 8, 8, generator=g)
    res = membership_auc(ZeroMemoriser(), members, non_members)
    assert res["auc"] > 0.9
    assert res["mean_loss_members"] < res["mean_loss_non_members"]
    assert (res["n_members"], res["n_non_members"]) == (100, 100)


def test_identical_distributions_give_half():
    g = torch.Generator().manual_seed(1)
    a, b = (0.3 * torch.randn(300, 1, 8, 8, generator=g) for _ in range(2))
    res = membership_auc(ZeroMemoriser(), a, b)
    assert abs(res["auc"] - 0.5) < 0.08
    assert 0.02 < res["auc_se"] < 0.03  # Hanley–McNeil at A = 0.5, 300 vs 300: ≈ 0.0236


def test_losses_are_deterministic_and_conditional_models_get_labels(tiny_model_dir):
    from fastunlearn.models.ddpm import load_adapter

    adapter = load_adapter(tiny_model_dir)
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    a = denoising_losses(adapter, x, y, timesteps=(10, 500), n_noise=1)
    b = denoising_losses(adapter, x, y, timesteps=(10, 500), n_noise=1)
    c = denoising_losses(adapter, x, torch.tensor([3] * 6), timesteps=(10, 500), n_noise=1)
    assert torch.equal(a, b) and a.shape == (6,)
    assert not torch.equal(a, c)


def test_heldout_non_members_are_test_digits_of_the_forget_classes():
    images, labels = heldout_non_members(torch.tensor([0, 0, 7]))
    assert set(labels.tolist()) == {0, 7} and images.shape[1:] == (1, 16, 16)
    assert heldout_non_members(torch.tensor([-1, -1])) is None


def test_per_timestep_losses_and_the_normalised_score(tiny_model_dir, monkeypatch):
    """``per_timestep`` gives [T, N] whose mean over T is the plain loss; the score is invariant to scaling one
    timestep's loss (what the normalisation is for: the ε-loss at small t dwarfs the rest)."""
    from fastunlearn.eval import mia
    from fastunlearn.models.ddpm import load_adapter

    adapter = load_adapter(tiny_model_dir)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(10, 1, 16, 16, generator=g) * 2 - 1, torch.tensor([0, 1] * 5)
    kw = dict(timesteps=(10, 100, 500), n_noise=2)
    per_t = denoising_losses(adapter, x, y, per_timestep=True, **kw)
    assert per_t.shape == (3, 10)
    torch.testing.assert_close(per_t.mean(0), denoising_losses(adapter, x, y, **kw))

    plain = membership_auc(adapter, (x[:6], y[:6]), (x[6:], y[6:]), **kw)
    real = mia.denoising_losses

    def scaled(*a, **k):  # the t = 10 row 1000× larger: a raw mean would be that row alone
        out = real(*a, **k)
        out[0] *= 1000.0
        return out

    monkeypatch.setattr(mia, "denoising_losses", scaled)
    assert membership_auc(adapter, (x[:6], y[:6]), (x[6:], y[6:]), **kw)["auc"] == plain["auc"]
