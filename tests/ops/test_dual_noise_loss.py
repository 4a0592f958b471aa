"""dual_noise_loss: every fast backend (or the one forced from the environment) against a plain-PyTorch
oracle written in the tests (tests/ops/_compare.py, not the library's reference module), loss and gradient."""
import pytest
import torch

from fastunlearn.ops import dual_noise_loss

from _compare import assert_close, assert_grad_close, check_ops_at_size, mse_oracle

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# numel 1, 7, 1023, 2048*32+1 (prime 65537), a prime (100003), and a 4-D image batch.
SHAPES = [(1,), (7,), (3, 341), (65537,), (100003,), (5, 3, 7, 11)]


def _oracle(pred, target, n_forget, g_f, g_r):
    """fp64 losses and the gradient of g_f*L_f + g_r*L_r with respect to pred (autograd of the plain MSE)."""
    return mse_oracle(pred, target, n_forget, g_f, g_r)


def _n_forgets(batch):
    return sorted({0, 1, batch // 2, batch})


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, device, shape, dtype):
    gen = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    pred = torch.randn(shape, generator=gen).to(device, dtype)
    target = torch.randn(shape, generator=gen).to(device, dtype)
    for n_forget in _n_forgets(shape[0]):
        p = pred.clone().requires_grad_()
        lf, lr = dual_noise_loss(p, target, n_forget)
        assert lf.dtype == torch.float32 and lr.dtype == torch.float32 and lf.dim() == 0
        (0.7 * lf + 1.3 * lr).backward()
        want_f, want_r, want_grad = _oracle(pred, target, n_forget, 0.7, 1.3)
        assert_close(lf, want_f, 1e-5, 1e-7, f"{backend} L_f n_forget={n_forget}")
        assert_close(lr, want_r, 1e-5, 1e-7, f"{backend} L_r n_forget={n_forget}")
        assert p.grad.dtype == dtype
        assert_grad_close(p.grad[:n_forget], want_grad[:n_forget], dtype, f"{backend} forget-row grad n_forget={n_forget}")
        assert_grad_close(p.grad[n_forget:], want_grad[n_forget:], dtype, f"{backend} retain-row grad n_forget={n_forget}")


# 2**21+3 elements: each gradient element is ~1e-6, the scale where a fixed atol (1e-6, 1e-5) stops seeing it.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_size_gradients(backend, device, dtype):
    """The check test_cuda.py runs at 2**24+3 on the GPU, here on this machine's backends."""
    if backend == "triton" and device.type == "cpu":
        pytest.skip("the Triton interpreter takes ~30 s per dtype at this size; test_cuda.py runs Triton at 2**24+3")
    check_ops_at_size(device, dtype, 2**21 + 3)


def test_empty_sides_are_zero(backend, device):
    pred = torch.randn(4, 3, device=device, requires_grad=True)
    target = torch.randn(4, 3, device=device)
    lf, lr = dual_noise_loss(pred, target, 0)
    assert lf.item() == 0.0 and lr.item() > 0
    (lf + lr).backward()
    assert torch.isfinite(pred.grad).all()
    lf, lr = dual_noise_loss(pred.detach(), target, 4)
    assert lr.item() == 0.0 and lf.item() > 0


def test_only_one_loss_used_in_backward(backend, device):
    """Backward through L_f alone gives no gradient to the retain rows, and vice versa."""
    pred = torch.randn(6, 5, device=device, requires_grad=True)
    target = torch.randn(6, 5, device=device)
    lf, _ = dual_noise_loss(pred, target, 2)
    lf.backward()
    assert pred.grad[2:].abs().max().item() == 0.0
    assert pred.grad[:2].abs().max().item() > 0.0


def test_gradient_flows_to_target(backend, device):
    pred = torch.randn(4, 8, device=device, requires_grad=True)
    target = torch.randn(4, 8, device=device, requires_grad=True)
    lf, lr = dual_noise_loss(pred, target, 1)
    (lf + 2 * lr).backward()
    assert_close(target.grad, -pred.grad, 0, 0, "target grad = -pred grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(backend, device, dtype):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(8, 6, 10, generator=gen).to(device, dtype)
    pred = base.transpose(1, 2)[:, ::2]  # [8, 5, 6], non-contiguous
    target = torch.randn(8, 6, 10, generator=gen).to(device, dtype)[:, :, ::2].transpose(1, 2)
    assert not pred.is_contiguous() and not target.is_contiguous()
    want_f, want_r, want_grad = _oracle(pred, target, 3, 0.7, 1.3)
    lf, lr = dual_noise_loss(pred.requires_grad_(), target, 3)
    (0.7 * lf + 1.3 * lr).backward()
    assert_close(lf, want_f, 1e-5, 1e-7, "L_f")
    assert_close(lr, want_r, 1e-5, 1e-7, "L_r")
    assert pred.grad.shape == pred.shape and pred.grad.dtype == dtype
    assert_grad_close(pred.grad[:3], want_grad[:3], dtype, f"{backend} forget-row grad (non-contiguous)")
    assert_grad_close(pred.grad[3:], want_grad[3:], dtype, f"{backend} retain-row grad (non-contiguous)")


def test_deterministic(backend, device):
    pred = torch.randn(64, 1, 16, 16, device=device, requires_grad=True)
    target = torch.randn(64, 1, 16, 16, device=device)
    runs = []
    for _ in range(2):
        pred.grad = None
        lf, lr = dual_noise_loss(pred, target, 17)
        (lf + lr).backward()
        runs.append((lf.detach().clone(), lr.detach().clone(), pred.grad.clone()))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", ["shape", "dtype", "n_forget", "scalar"])
def test_clear_errors(bad):
    pred = torch.randn(4, 3)
    if bad == "shape":
        with pytest.raises(ValueError, match="shapes differ"):
            dual_noise_loss(pred, torch.randn(4, 2), 1)
    elif bad == "dtype":
        with pytest.raises(ValueError, match="float16"):
            dual_noise_loss(pred, torch.randn(4, 3).half(), 1)
    elif bad == "n_forget":
        with pytest.raises(ValueError, match=r"n_forget=5 is outside \[0, batch=4\]"):
            dual_noise_loss(pred, pred, 5)
    else:
        with pytest.raises(ValueError, match="batch dimension"):
            dual_noise_loss(torch.tensor(1.0), torch.tensor(2.0), 0)
