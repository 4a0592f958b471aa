"""The authors'-loop image-to-image reference (``benchmarks/reference_i2i.py``) on tiny 16×16 models: its loss and
its encoder gradient are the library's ``i2i`` on the same batch and draws (MAGE's weighting: equal; Palette's mean
over the whole mixed batch: N_r / B = ½ of it), it encodes as their loops do (counted by forward hooks: MAGE three
passes of the whole batch, Palette two; the decoder never), the optimizer holds every parameter, the decoder's
included, and the teacher is a copy of the whole model."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastunlearn.methods import base as methods
from fastunlearn.models.i2i import build_tiny_inpaint, build_tiny_mae

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference_i2i import ReferenceI2I  # noqa: E402

N = 3  # forget rows = retain rows, as the library's run (batch_size per side)
LR = 1e-3
ALPHA = {"inpaint": 0.1, "mae": 0.2}  # the library's defaults per architecture, by hand
#: (architecture, structure): each fork's own, and each structure on the other architecture.
CASES = [("inpaint", "palette"), ("mae", "mage"), ("inpaint", "mage"), ("mae", "palette")]
#: the reference's loss ÷ the library's when N_f = N_r (module docstring of reference_i2i)
FACTOR = {"mage": 1.0, "palette": 0.5}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(arch: str):
    return build_tiny_inpaint(seed=0) if arch == "inpaint" else build_tiny_mae(seed=0)


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, 1, 16, 16, generator=g) * 2 - 1, torch.rand(N, 1, 16, 16, generator=g) * 2 - 1


def decoder_module(adapter) -> torch.nn.Module:
    return adapter.model.up_blocks if adapter.arch == "inpaint" else adapter.model.decoder


def encoder_module(adapter) -> torch.nn.Module:
    return adapter.model.conv_in if adapter.arch == "inpaint" else adapter.model.vit


def perturb(adapter) -> None:
    """Move the encoder off θ₀ (seeded), so that the retain term is not zero."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in adapter.parameters("encoder"):
            p.add_(0.1 * p.abs().mean() * torch.randn(p.shape, generator=g))


def count(modules: dict[str, torch.nn.Module]) -> dict[str, list[int]]:
    """Forward pre-hooks recording the rows of every call of each module."""
    seen: dict[str, list[int]] = {name: [] for name in modules}
    for name, m in modules.items():
        m.register_forward_pre_hook(lambda mod, args, kwargs, name=name: seen[name].append(
            int((args[0] if args else next(iter(kwargs.values()))).shape[0])), with_kwargs=True)
    return seen


@pytest.mark.parametrize("arch,structure", CASES)
def test_loss_and_gradient_are_the_librarys(arch, structure):
    base = build(arch)
    x_f, x_r = images(1)
    lib_adapter, ref_adapter = base.scratch_copy(), base.scratch_copy()
    lib = methods.get("i2i")()
    lib.setup(lib_adapter, methods.MethodConfig(lr=LR, options=methods.parse_options("i2i", {}), forget_classes=(0,),
                                                retain_classes=(1,), scope="encoder"))
    perturb(lib_adapter)  # after setup: the teacher is θ₀'s encoder
    g = torch.Generator().manual_seed(7)
    got = lib.step(methods.Batch(x_f, torch.zeros(N, dtype=torch.long), g),
                   methods.Batch(x_r, torch.ones(N, dtype=torch.long), g))
    decoder_before = [p.detach().clone() for p in ref_adapter.parameters("decoder")]
    ref = ReferenceI2I().setup(ref_adapter, lr=LR, alpha=ALPHA[arch], structure=structure)
    perturb(ref_adapter)
    out = ref.step(x_f, x_r, torch.Generator().manual_seed(7))

    k = FACTOR[structure]
    lib_r, lib_f = float(got["loss_retain"]), float(got["loss_forget"])
    assert lib_f > 0 and lib_r > 0
    assert out["retain"] == pytest.approx(k * lib_r, rel=1e-5)
    assert out["forget"] == pytest.approx(k * lib_f, rel=1e-5)
    assert out["loss"] == pytest.approx(k * (lib_r + ALPHA[arch] * lib_f), rel=1e-5)
    # the encoder's gradient: k × the library's (a dropped term, a wrong α or a detached student shows here)
    lib_grads = dict(lib_adapter.named_parameters("encoder"))
    scale = max(float(p.grad.abs().max()) for p in lib_grads.values())
    for name, p in ref_adapter.named_parameters("encoder"):
        torch.testing.assert_close(p.grad, k * lib_grads[name].grad, atol=1e-5 * scale, rtol=1e-4)
    # the decoder: in the optimizer, no gradient, weights bitwise unchanged by the step
    for p, before in zip(ref_adapter.parameters("decoder"), decoder_before):
        assert p.grad is None and torch.equal(p.detach(), before)


@pytest.mark.parametrize("arch,structure", CASES)
def test_encodes_per_step(arch, structure):
    base = build(arch)
    ref = ReferenceI2I().setup(base, lr=LR, alpha=ALPHA[arch], structure=structure)
    seen = count({"student": encoder_module(ref.student), "teacher": encoder_module(ref.teacher),
                  "student_decoder": decoder_module(ref.student), "teacher_decoder": decoder_module(ref.teacher)})
    x_f, x_r = images(2)
    ref.step(x_f, x_r, torch.Generator().manual_seed(3))
    # MAGE: the student once, the teacher on the batch (guide) and on every row's noise (mis_guide); Palette: one each
    teacher = [2 * N, 2 * N] if structure == "mage" else [2 * N]
    assert seen == {"student": [2 * N], "teacher": teacher, "student_decoder": [], "teacher_decoder": []}


@pytest.mark.parametrize("arch", ["inpaint", "mae"])
def test_optimizer_and_teacher_hold_the_whole_model(arch):
    base = build(arch)
    ref = ReferenceI2I().setup(base, lr=LR, alpha=ALPHA[arch])
    in_optimizer = {id(p) for group in ref.optimizer.param_groups for p in group["params"]}
    decoder, encoder = base.parameters("decoder"), base.parameters("encoder")
    assert decoder and all(id(p) in in_optimizer for p in decoder)
    assert all(id(p) in in_optimizer for p in encoder)
    assert all(p.requires_grad for p in decoder)
    # the teacher: a separate copy of every parameter, decoder included, equal to θ₀
    student, teacher = dict(base.named_parameters("all")), dict(ref.teacher.named_parameters("all"))
    assert student.keys() == teacher.keys() and any(n.startswith(("up_blocks.", "decoder.")) for n in teacher)
    for name, p in teacher.items():
        assert p.data_ptr() != student[name].data_ptr() and torch.equal(p, student[name])
