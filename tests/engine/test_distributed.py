"""Engine, many processes: ``torchrun --nproc-per-node 2 -m fastunlearn run`` (gloo, CPU) — data-parallel
and FSDP2-sharded — ends where one process ends; a sharded job killed with SIGKILL and resumed ends bitwise
where it would have; each process's rows of a global batch carry the same random draws as one process's.

Why the weights are compared at atol 2e-5 (2% of one Adam step at lr 1e-3) and not bitwise: the runs sum
the same per-row gradients in a different order (one process: 4 rows in one kernel; two: 2 + 2, then the
all-reduce or reduce-scatter), which changes the last bits. Adam moves every weight by about lr per step
whatever the size of its gradient, so an element whose gradient is itself rounding noise — the attention
key biases, whose gradient is exactly zero in exact arithmetic (softmax ignores a shift shared by every
key) — takes a noise-directed step. Measured (6 steps, lr 1e-3; DDP and FSDP alike): 45,305 of 45,321
elements (99.96%) agree at rtol 1e-5 / atol 1e-6; the largest difference is 9.7e-6 (an attention ``to_v``
weight) where the largest weight change is 9.7e-4; the losses and the gradient norm of every step agree
at rel 1.3e-6, λ at 1.1e-5.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
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


STEPS = 6


def _run_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    # fp32: bf16 autocast (auto on CPUs with native bf16) rounds each side's activations, which hides the
    # comparison under bf16 noise. A checkpoint every step does not change the numbers (the kill test needs it).
    return ["run", "--model", str(model_dir), "--forget", "class:0", "--steps", str(STEPS), "--batch-size", "4",
            "--lr", "1e-3", "--seed", "3", "--no-eval", "--device", "cpu", "--precision", "fp32", "--quiet",
            "--checkpoint-every", "1", "--config", str(model_dir.parent / "every-step.yaml"), "--out", str(out), *extra]


#: A rare abort of a gloo process (seen about once in 10 two-process runs on torch 2.13 CPU, rank 0; whether it
#: comes at teardown, after the outputs are complete, is not yet pinned down): std::terminate from a C++ thread
#: destructor, not a Python error. A
#: fresh run (no --resume) that dies with exactly this is retried once, with a warning; any other failure, and
#: every numerical check, fails as before. Tracked in the issue notes of 2026-11-29.
_GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def _launch(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "--master-port", str(_free_port()), "-m", "fastunlearn", *args],
                          env=_env(), capture_output=True, text=True, timeout=300)


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    done = _launch(nproc, args)
    if done.returncode != 0 and _GLOO_TEARDOWN_ABORT in done.stderr and "--resume" not in args:
        import shutil
        import warnings

        warnings.warn(f"torchrun: a process aborted at gloo teardown ({_GLOO_TEARDOWN_ABORT!r}); retrying once")
        out = Path(args[args.index("--out") + 1])
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)
        done = _launch(nproc, args)
    return done


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import importlib.util

    from diffusers import DDPMScheduler

    from fastunlearn.models.ddpm import DDPMAdapter

    # the tiny UNet of tests/conftest.py (its fixtures are per test; this one is per module)
    spec = importlib.util.spec_from_file_location("_tests_conftest", Path(__file__).parents[1] / "conftest.py")
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)
    tiny_unet = shared.tiny_unet
    root = tmp_path_factory.mktemp("dist")
    (root / "every-step.yaml").write_text("log_every: 1\n")
    DDPMAdapter(tiny_unet(), DDPMScheduler(num_train_timesteps=1000), null_label=10).save_pretrained(root / "tiny")
    return root / "tiny"


@pytest.fixture(scope="module")
def one_process(model_dir) -> Path:
    """The reference: the same job in one plain process."""
    out = model_dir.parent / "one"
    done = subprocess.run([sys.executable, "-m", "fastunlearn", *_run_args(model_dir, out)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _assert_matches(reference: Path, out: Path, start: Path) -> None:
    a, b = _weights(reference), _weights(out)
    assert a.keys() == b.keys()
    moved = max((a[k] - _weights(start)[k]).abs().max().item() for k in a)
    assert moved > 1e-4, "the run must change the weights for the comparison to mean anything"
    close = sum(int(torch.isclose(a[k], b[k], rtol=1e-5, atol=1e-6).sum()) for k in a)
    total = sum(v.numel() for v in a.values())
    assert close / total > 0.999, f"only {close}/{total} elements agree at rtol 1e-5 / atol 1e-6"
    for k in a:  # atol: 2% of one Adam step (see the module docstring)
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=2e-5, msg=lambda m: f"{k}: {m}")
    log_a, log_b = _log(reference), _log(out)
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b] == list(range(1, STEPS + 1))
    for ra, rb in zip(log_a, log_b):  # metrics averaged over the processes = the global batch's
        for key in ("loss_forget", "loss_retain", "grad_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)
        # λ = η − ⟨g_r,g_f⟩/‖g_f‖² is a difference of nearly equal terms: it magnifies the last bits
        assert rb["lambda"] == pytest.approx(ra["lambda"], rel=1e-4, abs=1e-6), (ra["step"], "lambda")


def test_torchrun_two_processes_match_one_process(model_dir, one_process):
    out = model_dir.parent / "ddp"
    two = _torchrun(2, _run_args(model_dir, out))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote ") == 1, "only process 0 prints the summary"
    assert not list(model_dir.parent.glob(".*.partial")), "the partial dir was moved into place"
    _assert_matches(one_process, out, model_dir)


@pytest.fixture(scope="module")
def fsdp_two(model_dir) -> Path:
    out = model_dir.parent / "fsdp"
    done = _torchrun(2, _run_args(model_dir, out, "--sharding", "fsdp"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_fsdp_two_processes_match_one_process(model_dir, one_process, fsdp_two):
    """FSDP2 (fully_shard) on gloo: each process holds half of every parameter and of its gradient;
    bilevel_combine's partial sums, the clip norm and the non-finite guard are summed over the shards."""
    _assert_matches(one_process, fsdp_two, model_dir)


def _launch_by_env(world: int, args: list[str]) -> list[subprocess.Popen]:
    """The processes of a job started the way ``accelerate launch`` does: by the environment variables."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "fastunlearn", *args], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def test_fsdp_run_killed_then_resumed_is_bitwise_the_uninterrupted_one(model_dir, fsdp_two):
    """SIGKILL both processes of a sharded job after a checkpoint; resumed on 2 processes it ends bitwise
    where the uninterrupted sharded job ends (the checkpoint holds full tensors, re-sharded on resume)."""
    import signal

    from fastunlearn.api import _partial_dir
    from fastunlearn.engine import checkpoint as ckpt

    out = model_dir.parent / "fsdp-killed"
    args = _run_args(model_dir, out, "--sharding", "fsdp")
    procs = _launch_by_env(2, args)
    deadline = time.monotonic() + 120
    kill_at = 3
    while True:
        found = ckpt.list_checkpoints(_partial_dir(out) / "checkpoints")
        if found and found[-1][0] >= kill_at:
            break
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
            pytest.fail("the sharded job ended before its checkpoint: "
                        + " | ".join(p.stderr.read()[-1500:] for p in procs))
        time.sleep(0.002)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)
    reached = ckpt.list_checkpoints(_partial_dir(out) / "checkpoints")[-1][0]
    assert reached < STEPS and not out.exists()

    resumed = _torchrun(2, [*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["train"]["resumed_from"] == reached
    a, b = _weights(fsdp_two), _weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after kill + resume (killed at step {reached})"
    assert [{k: v for k, v in r.items() if k not in ("steps_per_s", "elapsed_s")} for r in _log(out)] == \
        [{k: v for k, v in r.items() if k not in ("steps_per_s", "elapsed_s")} for r in _log(fsdp_two)]


def test_process_0_evaluates_alone_while_the_others_wait(model_dir):
    """With evaluation on (FSDP: process 0 evaluates a gathered full copy): no collective inside the
    evaluation may wait for the other processes (torchmetrics' FID would gather by default and hang)."""
    out = model_dir.parent / "fsdp-eval"
    args = ["run", "--model", str(model_dir), "--forget", "class:0", "--steps", "2", "--batch-size", "4",
            "--device", "cpu", "--quiet", "--eval-per-class", "2", "--eval-steps", "2", "--sharding", "fsdp",
            "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "--master-port", str(_free_port()), "-m", "fastunlearn", *args],
                          env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert {"forget_accuracy", "retain_accuracy", "fid"} <= set(summary["before"]) and summary["after"]
    assert (out / "report.html").is_file() and (out / "samples_after.png").is_file()


def test_fsdp_refuses_methods_that_need_the_whole_gradient(model_dir):
    out = model_dir.parent / "salun-fsdp"
    done = _torchrun(2, [*_run_args(model_dir, out, "--sharding", "fsdp"), "--method", "salun"])
    assert done.returncode != 0
    assert "cannot run with sharding 'fsdp'" in done.stderr and "quantile over the whole gradient" in done.stderr
    assert not out.exists() and not list(model_dir.parent.glob(".salun-fsdp.partial"))


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


# ---------------------------------------------------------------------- which device each process runs on
def _node_env(rank: int, world: int = 4, per_node: int = 2) -> dict[str, str]:
    """torchrun's variables for process ``rank`` of ``world`` on nodes of ``per_node`` GPUs."""
    return {"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank % per_node)}


def test_each_process_takes_its_local_gpu():
    """``--device cuda`` / ``auto`` under torchrun, 2 nodes × 2 GPUs: rank r runs on cuda:(r mod 2)."""
    for rank in range(4):
        d = Distributed.from_env(env=_node_env(rank))
        assert d.device_for(torch.device("cuda"), device_count=2) == torch.device("cuda", rank % 2)
        assert d.device_for(torch.device("cpu"), device_count=2) == torch.device("cpu")  # gloo on the CPU
    one = Distributed.from_env(env={})
    assert one.device_for(torch.device("cuda", 1), device_count=2) == torch.device("cuda", 1)
    assert one.device_for(torch.device("cuda"), device_count=2) == torch.device("cuda")


def test_explicit_gpu_index_with_many_processes_is_refused_unless_it_is_the_local_one():
    """``torchrun ... --device cuda:1`` gave every process GPU 1: now each process other than LOCAL_RANK 1 says
    to pass --device cuda with CUDA_VISIBLE_DEVICES (and a caller's own per-process ``cuda:LOCAL_RANK`` works)."""
    for rank in range(4):
        d = Distributed.from_env(env=_node_env(rank))
        if rank % 2 == 1:
            assert d.device_for(torch.device("cuda", 1), device_count=2) == torch.device("cuda", 1)
        else:
            with pytest.raises(UserInputError, match=r"--device cuda:1 with 4 processes: .*LOCAL_RANK=0\)\. Pass "
                                                     r"--device cuda \(or auto\) .*CUDA_VISIBLE_DEVICES"):
                d.device_for(torch.device("cuda", 1), device_count=2)


def test_too_few_gpus_for_the_processes_or_the_index_is_a_user_error(monkeypatch):
    with pytest.raises(UserInputError, match=r"LOCAL_RANK=2 needs cuda:2 but 2 CUDA device\(s\) are visible"):
        Distributed.from_env(env=_node_env(2, world=4, per_node=4)).device_for(torch.device("cuda"), device_count=2)
    with pytest.raises(UserInputError, match=r"cuda:3 was asked for but 2 CUDA device\(s\) are visible"):
        Distributed.from_env(env={}).device_for(torch.device("cuda", 3), device_count=2)
    from fastunlearn.engine.loop import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserInputError, match=r"'cuda:2' was asked for but 2 CUDA device\(s\) are visible"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("requested", ["auto", "cuda", "cuda:1"])
def test_start_makes_the_local_gpu_current(monkeypatch, requested):
    """:meth:`Distributed.start` on every rank of a 2-node × 2-GPU job (no GPU: torch.cuda and an existing process
    group are stood in for): the device it returns and the one it makes current are cuda:LOCAL_RANK; an
    explicit cuda:1 is refused where it is not the local GPU (it used to put every process on GPU 1)."""
    import torch.distributed as dist

    from fastunlearn.engine.loop import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # a caller's group: start opens none
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    started = 0
    for rank in range(4):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
        d = Distributed.from_env(env=_node_env(rank))
        if requested == "cuda:1" and rank % 2 == 0:
            with pytest.raises(UserInputError, match="CUDA_VISIBLE_DEVICES"):
                d.start(resolve_device(requested))
            continue
        got = d.start(resolve_device(requested))
        started += 1
        assert got == d.device == current[-1] == torch.device("cuda", rank % 2)
    assert len(current) == started == (2 if requested == "cuda:1" else 4)
