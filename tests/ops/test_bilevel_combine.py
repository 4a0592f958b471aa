"""bilevel_combine: every fast backend against the oracle (λ from the formulas), edge cases, determinism."""
import math

import pytest
import torch

from fastunlearn.ops import bilevel_combine, bilevel_stats, reference

from _compare import STORE_TOL, assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SIZES = [1, 7, 1023, 2048 * 32 + 1, 100003]
RULES = ["bome", "cosine", "fixed"]


def _formula_lambda(go: torch.Tensor, gi: torch.Tensor, rule: str, eta: float) -> float:
    """λ straight from the paper/code formulas, in float64 on the host."""
    go, gi = go.double().cpu(), gi.double().cpu()
    dot, nn_i, nn_o = float(go @ gi), float(gi @ gi), float(go @ go)
    if nn_i == 0:
        return 0.0
    if rule == "bome":
        return max(0.0, (eta * nn_i - dot) / nn_i)
    if rule == "cosine":
        denom = math.sqrt(nn_o) * math.sqrt(nn_i)
        return max(0.0, eta - (dot / denom if denom > 0 else 0.0))
    return eta


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_matches_formula(backend, device, n, dtype, rule):
    gen = torch.Generator().manual_seed(n * 7 + RULES.index(rule))
    go = torch.randn(n, generator=gen).to(device, dtype)
    # Correlate g_i with g_o so that λ is neither trivially 0 nor η.
    gi = (0.3 * go.float() + torch.randn(n, generator=gen).to(device)).to(dtype)
    eta = 0.45
    combined, lam, finite = bilevel_combine(go, gi, rule, eta)
    assert bool(finite) and lam.dtype == torch.float32 and lam.dim() == 0 and finite.dtype == torch.bool
    want_lam = _formula_lambda(go, gi, rule, eta)
    assert lam.item() == pytest.approx(want_lam, rel=2e-5, abs=1e-6)
    want = go.double() + want_lam * gi.double()
    rtol, atol = STORE_TOL[dtype]
    assert combined.dtype == dtype
    assert_close(combined, want, rtol, max(atol, 1e-5), f"{backend} {rule} combined")
    stats = bilevel_stats(go, gi)
    g64o, g64i = go.double().cpu(), gi.double().cpu()
    assert_close(stats[:3], torch.stack([g64o @ g64i, g64i @ g64i, g64o @ g64o]), 2e-5, 1e-6, "stats")
    assert stats[3].item() == 0


@pytest.mark.parametrize("rule", RULES)
def test_zero_inner_gradient_gives_zero_lambda(backend, device, rule):
    go = torch.randn(1000, device=device)
    combined, lam, finite = bilevel_combine(go, torch.zeros_like(go), rule, 0.5)
    assert lam.item() == 0.0 and bool(finite)
    assert torch.equal(combined, go)


def test_cosine_with_zero_outer_gradient(backend, device):
    gi = torch.randn(100, device=device)
    _, lam, _ = bilevel_combine(torch.zeros_like(gi), gi, "cosine", 0.25)
    assert lam.item() == pytest.approx(0.25)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["outer", "inner"])
def test_non_finite_sets_flag_and_leaves_outer_untouched(backend, device, poison, where):
    go = torch.randn(5000, device=device)
    gi = torch.randn(5000, device=device)
    (go if where == "outer" else gi)[1234] = poison
    before = go.clone()
    combined, lam, finite = bilevel_combine(go, gi, "bome", 0.1, out=go)
    assert combined is go
    assert not bool(finite) and lam.item() == 0.0
    assert torch.equal(torch.nan_to_num(go, nan=7.0), torch.nan_to_num(before, nan=7.0))
    assert bilevel_stats(go, gi)[3].item() == 1


def test_in_place_equals_out_of_place(backend, device):
    go = torch.randn(70001, device=device)
    gi = torch.randn(70001, device=device)
    fresh, lam1, _ = bilevel_combine(go, gi, "bome", 0.2)
    same, lam2, _ = bilevel_combine(go, gi, "bome", 0.2, out=go)
    assert same is go and torch.equal(fresh, go) and torch.equal(lam1, lam2)


def test_list_of_many_tensors_matches_flat(backend, device):
    """≥ 200 tensors of odd sizes: same λ as on the concatenation, combined per tensor."""
    gen = torch.Generator().manual_seed(3)
    sizes = [int(s) for s in torch.randint(1, 300, (213,), generator=gen)]
    go = [torch.randn(s, generator=gen).to(device) for s in sizes]
    gi = [torch.randn(s, generator=gen).to(device) for s in sizes]
    combined, lam, finite = bilevel_combine(go, gi, "bome", 0.3)
    want_lam = _formula_lambda(torch.cat(go), torch.cat(gi), "bome", 0.3)
    assert lam.item() == pytest.approx(want_lam, rel=1e-5)
    assert len(combined) == 213
    for c, o, i in zip(combined, go, gi):
        assert_close(c, o.double() + want_lam * i.double(), 1e-5, 1e-6, "list combined")
    outs = [torch.empty_like(o) for o in go]
    again, _, _ = bilevel_combine(go, gi, "bome", 0.3, out=outs)
    assert all(a is b for a, b in zip(again, outs))


def test_multidim_and_non_contiguous(backend, device):
    go = torch.randn(31, 17, device=device).t()  # non-contiguous view
    gi = torch.randn(17, 31, device=device)
    out = torch.empty(31, 17, device=device).t()
    combined, lam, _ = bilevel_combine(go, gi, "cosine", 0.9, out=out)
    want_lam = _formula_lambda(go.reshape(-1), gi.reshape(-1), "cosine", 0.9)
    assert combined is out
    assert_close(out, go.double() + want_lam * gi.double(), 1e-5, 1e-6, "non-contiguous out")


def test_sharded_partial_sums_give_the_same_lambda(backend, device):
    """Two shards' statistics, summed (an all-reduce), give the same λ as the whole gradient."""
    go = torch.randn(10001, device=device)
    gi = torch.randn(10001, device=device)
    shard_stats = bilevel_stats(go[:4000], gi[:4000]) + bilevel_stats(go[4000:], gi[4000:])
    _, lam_shard, _ = bilevel_combine(go[:4000], gi[:4000], "bome", 0.1, reduce_stats=lambda s: shard_stats)
    _, lam_full, _ = bilevel_combine(go, gi, "bome", 0.1)
    assert lam_shard.item() == pytest.approx(lam_full.item(), rel=1e-5)


def test_deterministic_bitwise(backend, device):
    go = torch.randn(2048 * 32 + 1, device=device)
    gi = torch.randn(2048 * 32 + 1, device=device)
    a = bilevel_combine(go, gi, "bome", 0.1)
    b = bilevel_combine(go, gi, "bome", 0.1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(bilevel_stats(go, gi), bilevel_stats(go, gi))


def test_errors():
    with pytest.raises(ValueError, match="unknown rule"):
        bilevel_combine(torch.ones(3), torch.ones(3), "adaptive")
    with pytest.raises(ValueError, match="3 elements but g_inner has 4"):
        bilevel_combine(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="equal, non-empty"):
        bilevel_combine([torch.ones(3)], [torch.ones(3), torch.ones(2)])


def test_reference_matches_formula_directly():
    """The oracle itself against the host-side float64 formulas (it is the other tests' ground truth)."""
    go, gi = torch.randn(999, dtype=torch.float64), torch.randn(999, dtype=torch.float64)
    for rule in RULES:
        _, lam, finite = reference.bilevel_combine(go, gi, rule, 0.3)
        assert lam.item() == pytest.approx(_formula_lambda(go, gi, rule, 0.3), rel=1e-6) and bool(finite)
