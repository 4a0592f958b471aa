"""FlatGrads: param.grad as views of one buffer, kept across backward passes."""
import copy

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


def _conv_model(channels_last: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 1),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def test_channels_last_grad_views_follow_the_parameters_strides():
    """Each grad view has its parameter's strides (a channels-last conv weight's are not contiguous ones), and
    two backward passes into two buffers land exactly what autograd.grad gives on an independent copy."""
    model = _conv_model(channels_last=True)
    twin = copy.deepcopy(model)
    conv = model[0].weight
    assert not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)
    flat = FlatGrads(model.parameters())
    for p in model.parameters():
        assert p.grad.shape == p.shape and p.grad.stride() == p.stride()
    assert flat.check_bound()
    gen = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(2, 3, 6, 6, generator=gen).to(memory_format=torch.channels_last) for _ in range(2))
    g_f = flat.new_buffer()
    flat.bind(g_f)
    model(x1).pow(2).sum().backward()
    flat.bind(flat.buffer)
    model(x2).sin().sum().backward()
    model(x1).sum().backward()  # accumulates in place, still in the views
    assert flat.check_bound() and conv.grad.stride() == conv.stride()
    want_f = torch.autograd.grad(twin(x1).pow(2).sum(), list(twin.parameters()))
    want_r = torch.autograd.grad(twin(x2).sin().sum() + twin(x1).sum(), list(twin.parameters()))
    for got_buf, want in ((g_f, want_f), (flat.buffer, want_r)):
        for v, w in zip(flat.views(got_buf), want):
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6)  # elementwise, by logical index
    # The buffer is in each parameter's memory order: the conv weight's chunk is its grad's raw memory.
    n = conv.numel()
    raw = torch.as_strided(want_f[0].contiguous(memory_format=torch.channels_last), (n,), (1,))
    torch.testing.assert_close(g_f[:n], raw, rtol=1e-5, atol=1e-6)


def test_fused_adam_on_channels_last_views_matches_adam_on_plain_grads():
    """Fused Adam reads param and grad as raw memory: with the views' strides it updates the same elements as
    unfused Adam on an independent copy with autograd's own gradients."""
    model = _conv_model(channels_last=True)
    twin = _conv_model(channels_last=False)
    flat = FlatGrads(model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(2, 3, 6, 6, generator=gen)
        flat.buffer.zero_()
        model(x.to(memory_format=torch.channels_last)).pow(2).mean().backward()
        opt.step()
        ref.zero_grad()
        twin(x).pow(2).mean().backward()
        ref.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_check_bound_rejects_a_contiguous_view_of_a_channels_last_parameter():
    model = _conv_model(channels_last=True)
    flat = FlatGrads(model.parameters())
    conv = model[0].weight
    conv.grad = flat.buffer[: conv.numel()].view(conv.shape)  # same memory, wrong strides
    assert not flat.check_bound()
    flat.bind(flat.buffer)
    assert flat.check_bound()
    model[2].weight.grad = model[2].weight.grad.clone()  # right strides, other memory
    assert not flat.check_bound()


def test_gather_lays_tensors_out_like_the_views():
    model = _conv_model(channels_last=True)
    flat = FlatGrads(model.parameters())
    values = [torch.randn(p.shape) for p in model.parameters()]  # contiguous
    out = flat.gather(values)
    assert out.shape == (flat.numel,)
    for v, want in zip(flat.views(out), values):
        assert torch.equal(v, want)
    with pytest.raises(ValueError, match="expected 6 tensors, got 2"):
        flat.gather(values[:2])
