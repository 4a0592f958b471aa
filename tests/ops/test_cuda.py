"""The GPU paths: the CUDA-extension and Triton kernels on CUDA tensors (skipped without a GPU).

The same oracle comparisons as the CPU tests run for every backend through the ``backend`` fixture; this
file adds what only a GPU can show: λ never leaves the device (no host sync) and the combine step can be
captured in a CUDA graph.
"""
import pytest
import torch

from fastunlearn.ops import backends, bilevel_combine, reference

from _compare import assert_close, check_ops_at_size

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
    """Loss, gradient (both row groups, relative tolerance with its power asserted: at 2**24 elements each
    gradient element is ~1e-7, below any fixed atol) and the combine, against the test's own fp64 oracles.
    The same check runs on the CPU backends in test_dual_noise_loss.py::test_large_size_gradients."""
    _require(name)
    monkeypatch.setenv("FASTUNLEARN_BACKEND", name)
    check_ops_at_size(torch.device("cuda"), dtype, numel)


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
