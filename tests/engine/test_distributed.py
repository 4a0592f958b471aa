"""Engine, many processes: ``torchrun --nproc-per-node 2 -m fastunlearn run`` (gloo, CPU) ends where one
process ends; each process's rows of a global batch carry the same random draws as one process's.

Why the weights are compared at atol 1e-5 (1% of one Adam step at lr 1e-3) and not bitwise: the two runs
sum the same per-row gradients in a different order (one process: 4 rows in one kernel; two: 2 + 2, then
the all-reduce), which changes the last bits. Adam moves every weight by about lr per step whatever the
size of its gradient, so an element whose gradient is itself rounding noise — the attention key biases,
whose gradient is exactly zero in exact arithmetic (softmax ignores a shift shared by every key) — takes a
noise-directed step. Measured: 99.99% of the elements agree at rtol 1e-5 / atol 1e-6 and the largest
difference is 7e-6; the losses and λ of every step agree at rtol 1e-5.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastunlearn.engine.distributed import Distributed
from fastunlearn.engine.loop import SampleSet, _batch, step_seed
from fastunlearn.errors import UserInputError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run_args(model_dir: Path, out: Path) -> list[str]:
    # fp32: bf16 autocast (auto on CPUs with native bf16) rounds each side's activations, which hides the
    # comparison under bf16 noise.
    return ["run", "--model", str(model_dir), "--forget", "class:0", "--steps", "4", "--batch-size", "4",
            "--lr", "1e-3", "--seed", "3", "--no-eval", "--device", "cpu", "--precision", "fp32", "--quiet",
            "--out", str(out)]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_match_one_process(tiny_model_dir, tmp_path):
    (tmp_path / "every-step.yaml").write_text("log_every: 1\n")
    extra = ["--config", str(tmp_path / "every-step.yaml")]
    one = subprocess.run([sys.executable, "-m", "fastunlearn", *_run_args(tiny_model_dir, tmp_path / "one"), *extra],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), "-m", "fastunlearn",
                          *_run_args(tiny_model_dir, tmp_path / "two"), *extra],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1, "only process 0 prints the summary"
    assert not list(tmp_path.glob(".*.partial")), "the partial dir was moved into place"

    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    start = _weights(tiny_model_dir)
    assert a.keys() == b.keys()
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-4, "the run must change the weights for the comparison to mean anything"
    close = sum(int(torch.isclose(a[k], b[k], rtol=1e-5, atol=1e-6).sum()) for k in a)
    total = sum(v.numel() for v in a.values())
    assert close / total > 0.999, f"only {close}/{total} elements agree at rtol 1e-5 / atol 1e-6"
    for k in a:  # atol: 1% of one Adam step (see the module docstring)
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")

    log_a, log_b = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == [1, 2, 3, 4]
    for ra, rb in zip(log_a, log_b):  # metrics averaged over the processes = the global batch's
        for key in ("loss_forget", "loss_retain", "lambda", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)


# ---------------------------------------------------------------------- the slice logic, in one process
def _adapter(make_tiny_unet):
    from diffusers import DDPMScheduler

    from fastunlearn.models.ddpm import DDPMAdapter

    return DDPMAdapter(make_tiny_unet(), DDPMScheduler(num_train_timesteps=1000), null_label=10)


def _erasediff(adapter, **options):
    from fastunlearn.methods import base as methods

    unconditional = options.pop("_u", False)
    method = methods.get("erasediff")()
    method.setup(adapter, methods.MethodConfig(lr=1e-3, options=methods.parse_options("erasediff", options),
                                               forget_classes=(0,), unconditional=unconditional))
    return method


def _draws(method, world: int, step: int = 7, batch_size: int = 8):
    """Every process's forget and retain inputs for one step, concatenated in rank order."""
    g = torch.Generator().manual_seed(0)
    data = SampleSet(torch.rand(50, 1, 16, 16, generator=g) * 2 - 1, torch.randint(0, 10, (50,), generator=g))
    parts = []
    for rank in range(world):
        rows = Distributed(world_size=world, rank=rank).rows(batch_size)
        gen = torch.Generator().manual_seed(step_seed(0, step))
        fb, rb = _batch(data, batch_size, gen, rows), _batch(data, batch_size, gen, rows)
        f, target = method._forget_inputs(fb)
        r = method._retain_inputs(rb)
        parts.append((f.x_t, f.t, f.labels, target, r.x_t, r.t, r.noise, r.labels))
    return [torch.cat(xs) for xs in zip(*parts)]


@pytest.mark.parametrize("options", [{"target": "pseudo_label"}, {"target": "uniform"}])
def test_every_world_size_draws_the_same_global_batch(make_tiny_unet, options):
    method = _erasediff(_adapter(make_tiny_unet), **options)
    whole = _draws(method, 1)
    assert whole[0].shape[0] == 8
    for world in (2, 4):
        sliced = _draws(method, world)
        names = ("forget x_t", "forget t", "forget labels", "forget target", "retain x_t", "retain t",
                 "retain noise", "retain labels")
        for name, x, y in zip(names, whole, sliced):
            if name == "forget target" and options["target"] == "pseudo_label":
                # the model's prediction under the drawn pseudo-label: same inputs, rows computed in
                # smaller batches (a kernel may block differently)
                torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=lambda m: f"W={world} {name}: {m}")
            else:
                assert torch.equal(x, y), f"W={world}: {name} differs from one process's"


def test_unconditional_retain_relabelling_is_sliced_too(make_tiny_unet):
    adapter = _adapter(make_tiny_unet)
    method = _erasediff(adapter, target="uniform", _u=True)
    whole, halves = _draws(method, 1), _draws(method, 2)
    assert torch.equal(whole[7], halves[7]) and (whole[7] == 10).any(), "null relabelling drawn globally"


def test_rows_partition_the_global_batch():
    for world in (1, 2, 4):
        rows = [Distributed(world_size=world, rank=r).rows(8) for r in range(world)]
        assert [i for s in rows for i in range(8)[s]] == list(range(8))


def test_batch_size_must_divide_by_the_processes():
    Distributed(world_size=2).check_batch_size(4)
    with pytest.raises(UserInputError, match="must divide by the 3 processes"):
        Distributed(world_size=3).check_batch_size(4)


def test_launcher_variables():
    d = Distributed.from_env(env={"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (d.world_size, d.rank, d.local_rank, d.enabled, d.is_main) == (4, 2, 0, True, False)
    assert not Distributed.from_env(env={}).enabled
    with pytest.raises(UserInputError, match="not an integer"):
        Distributed.from_env(env={"WORLD_SIZE": "two"})
    with pytest.raises(UserInputError, match="inconsistent"):
        Distributed.from_env(env={"WORLD_SIZE": "2", "RANK": "2"})
