"""Triton launches run on their tensors' device: each launch of every kernel happens inside
``fastunlearn.ops.triton.device_guard`` of the inputs' device (a Triton launch goes to the *current* CUDA device,
so without it tensors on ``cuda:1`` would be worked on by ``cuda:0``). Checked here on CPU tensors under the
interpreter, with the guard replaced by a recorder; the guard itself is a no-op for CPU tensors."""
from __future__ import annotations

import contextlib

import pytest
import torch

from fastunlearn.ops import backends, bilevel_combine, dual_noise_loss

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(bool(backends.not_supported_reasons("triton", DEVICE, torch.float32)),
                                reason="the triton backend does not run here")


class GuardRecorder:
    """Stands in for ``device_guard``: records the device each guard is entered with and which one is active
    when each kernel is launched."""

    def __init__(self):
        self.entered: list[torch.device] = []
        self.active: torch.device | None = None
        self.launches: list[tuple[str, torch.device | None]] = []

    @contextlib.contextmanager
    def guard(self, device: torch.device):
        self.entered.append(device)
        outer, self.active = self.active, device
        try:
            yield
        finally:
            self.active = outer

    def watch(self, monkeypatch, module) -> None:
        """Replace ``module.device_guard`` and wrap every ``*_kernel`` of ``module`` so a launch records the
        guard active at that moment."""
        monkeypatch.setattr(module, "device_guard", self.guard)
        for name in [n for n in vars(module) if n.endswith("_kernel")]:
            monkeypatch.setattr(module, name, _Watched(getattr(module, name), name, self))


class _Watched:
    def __init__(self, kernel, name: str, recorder: GuardRecorder):
        self.kernel, self.name, self.recorder = kernel, name, recorder

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.recorder.launches.append((self.name, self.recorder.active))
            return launch(*args, **kwargs)

        return run


@pytest.fixture
def recorder(monkeypatch):
    from fastunlearn.ops.triton import bilevel_combine as bc_kernels
    from fastunlearn.ops.triton import dual_noise_loss as dnl_kernels

    monkeypatch.setenv("FASTUNLEARN_BACKEND", "triton")
    rec = GuardRecorder()
    rec.watch(monkeypatch, dnl_kernels)
    rec.watch(monkeypatch, bc_kernels)
    return rec


def test_dual_noise_loss_launches_inside_the_inputs_device_guard(recorder):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 1, 8, 8, generator=gen).to(DEVICE).requires_grad_(True)
    target = torch.randn(6, 1, 8, 8, generator=gen).to(DEVICE)
    loss_f, loss_r = dual_noise_loss(pred, target, 2)
    (loss_f + 3.0 * loss_r).backward()
    assert {name for name, _ in recorder.launches} == {"_partials_kernel", "_finish_kernel", "_backward_kernel"}
    assert all(active == pred.device for _, active in recorder.launches), recorder.launches
    assert recorder.entered and all(d == pred.device for d in recorder.entered)
    # The kernels still did their work (against the plain formula).
    p = pred.detach().clone().requires_grad_(True)
    want_f, want_r = (p[:2] - target[:2]).square().mean(), (p[2:] - target[2:]).square().mean()
    (want_f + 3.0 * want_r).backward()
    torch.testing.assert_close(torch.stack([loss_f, loss_r]).detach(), torch.stack([want_f, want_r]).detach())
    torch.testing.assert_close(pred.grad, p.grad)


def test_bilevel_combine_launches_inside_the_inputs_device_guard(recorder):
    gen = torch.Generator().manual_seed(1)
    go = torch.randn(5000, generator=gen).to(DEVICE)
    gi = (0.3 * go + torch.randn(5000, generator=gen).to(DEVICE))
    combined, lam, finite = bilevel_combine(go, gi, "bome", 0.4)
    assert {name for name, _ in recorder.launches} == {"_stats_partials_kernel", "_stats_finish_kernel", "_apply_kernel"}
    assert all(active == go.device for _, active in recorder.launches), recorder.launches
    # The kernels still did their work (BOME's λ = max((η‖g_i‖² − ⟨g_o,g_i⟩)/‖g_i‖², 0), in float64).
    want_lam = max((0.4 * float(gi.double() @ gi.double()) - float(go.double() @ gi.double()))
                   / float(gi.double() @ gi.double()), 0.0)
    assert bool(finite) and float(lam) == pytest.approx(want_lam, rel=1e-4)
    torch.testing.assert_close(combined, go + float(lam) * gi)


def test_device_guard_is_a_no_op_off_cuda_and_a_cuda_device_guard_on_it(monkeypatch):
    from fastunlearn.ops.triton import device_guard

    def no_cuda(*args, **kwargs):
        raise AssertionError("device_guard touched torch.cuda for a CPU tensor")

    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "device", no_cuda)
        m.setattr(torch.cuda, "_exchange_device", no_cuda)
        with device_guard(torch.device("cpu")):
            pass
    guard = device_guard(torch.device("cuda", 1))  # built, not entered: no GPU needed
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
