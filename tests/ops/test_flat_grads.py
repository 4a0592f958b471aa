"""FlatGrads: param.grad as views of one buffer, kept across backward passes."""
import pytest
import torch

from fastunlearn.ops import FlatGrads, bilevel_combine


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


def test_backward_accumulates_into_bound_buffers():
    model = _model()
    flat = FlatGrads(model.parameters())
    assert flat.numel == sum(p.numel() for p in model.parameters())
    x = torch.randn(4, 5)
    g_f = flat.new_buffer()
    flat.bind(g_f)
    model(x).pow(2).sum().backward()
    assert flat.check_bound() and g_f.abs().sum() > 0
    flat.bind(flat.buffer)
    model(x).sum().backward()
    assert flat.check_bound()
    # The buffers hold exactly what autograd.grad computes.
    want_f = torch.autograd.grad(model(x).pow(2).sum(), list(model.parameters()))
    assert torch.allclose(g_f, torch.cat([g.reshape(-1) for g in want_f]))
    combined, lam, _ = bilevel_combine(flat.buffer, g_f, "fixed", 0.5, out=flat.buffer)
    assert combined is flat.buffer
    assert torch.allclose(model[0].weight.grad.reshape(-1), flat.views(flat.buffer)[0].reshape(-1))


def test_optimizer_reads_the_buffer():
    model = _model()
    flat = FlatGrads(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    flat.buffer.fill_(0.5)
    opt.step()
    for b, p in zip(before, model.parameters()):
        assert torch.allclose(p, b - 0.5)


def test_rejects_mixed_dtypes_and_no_params():
    a = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="one dtype"):
        FlatGrads([a, b])
    with pytest.raises(ValueError, match="no parameter"):
        FlatGrads([torch.nn.Parameter(torch.ones(1), requires_grad=False)])
