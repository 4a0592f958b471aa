"""The GPU paths: the CUDA-extension and Triton kernels on CUDA tensors (skipped without a GPU).

The same oracle comparisons as the CPU tests run for every backend through the ``backend`` fixture; this
file adds what only a GPU can show: λ never leaves the device (no host sync) and the combine step can be
captured in a CUDA graph.
"""
import pytest
import torch

from fastunlearn.ops import backends, bilevel_combine, dual_noise_loss, reference

from _compare import STORE_TOL, assert_close

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU_BACKENDS = ["triton", "cuda"]


def _require(name):
    reasons = backends.not_supported_reasons(name, torch.device("cuda"), torch.float32)
    if reasons:
        pytest.skip(f"{name} backend unavailable: {'; '.join(reasons)}")


@pytest.mark.parametrize("name", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("numel", [1, 7, 1023, 2048 * 32 + 1, 100003, 2**24 + 3])
def test_gpu_kernels_match_reference(monkeypatch, name, dtype, numel):
    _require(name)
    monkeypatch.setenv("FASTUNLEARN_BACKEND", name)
    pred = torch.randn(numel, device="cuda", dtype=dtype).requires_grad_()
    target = torch.randn(numel, device="cuda", dtype=dtype)
    n_forget = numel // 3
    lf, lr = dual_noise_loss(pred, target, n_forget)
    (0.5 * lf + 2.0 * lr).backward()
    p64 = pred.detach().double().requires_grad_()
    rf, rr = reference.dual_noise_loss(p64, target.double(), n_forget)
    (0.5 * rf + 2.0 * rr).backward()
    assert_close(lf, rf, 1e-5, 1e-7, "L_f")
    assert_close(lr, rr, 1e-5, 1e-7, "L_r")
    assert_close(pred.grad, p64.grad, *STORE_TOL[dtype], "grad")
    go = torch.randn(numel, device="cuda", dtype=dtype)
    gi = torch.randn(numel, device="cuda", dtype=dtype)
    for rule in ("bome", "cosine", "fixed"):
        out, lam, finite = bilevel_combine(go, gi, rule, 0.3)
        want, want_lam, _ = reference.bilevel_combine(go.double(), gi.double(), rule, 0.3)
        assert bool(finite)
        assert lam.item() == pytest.approx(want_lam.item(), rel=2e-5, abs=1e-6)
        assert_close(out, want, STORE_TOL[dtype][0], 1e-5, f"combined {rule}")


@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_no_host_sync_and_graph_capture(monkeypatch, name):
    _require(name)
    monkeypatch.setenv("FASTUNLEARN_BACKEND", name)
    go = torch.randn(1 << 20, device="cuda")
    gi = torch.randn(1 << 20, device="cuda")
    out = torch.empty_like(go)
    bilevel_combine(go, gi, "bome", 0.1, out=out)  # compile/warm up outside the capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, lam, finite = bilevel_combine(go, gi, "bome", 0.1, out=out)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            _, g_lam, _ = bilevel_combine(go, gi, "bome", 0.1, out=out)
    go.copy_(torch.randn_like(go))
    graph.replay()
    torch.cuda.synchronize()
    want, want_lam, _ = reference.bilevel_combine(go, gi, "bome", 0.1)
    assert g_lam.item() == pytest.approx(want_lam.item(), rel=1e-5)
    assert_close(out, want, 1e-5, 1e-6, "graph replay")
