"""Engine, no lost work: a ``fastunlearn run`` process killed with SIGKILL at a random step and resumed with
``--resume`` and the same arguments ends bitwise where an uninterrupted run ends — weights and log.

SIGKILL cannot be caught: whatever the process was doing (a step, a checkpoint's write, a log line) stops
there, which is what a preempted or OOM-killed job sees.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastunlearn.api import _partial_dir
from fastunlearn.engine import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

STEPS = 30
#: Timing fields differ between any two runs.
_TIMING = ("steps_per_s", "elapsed_s")
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _args(model_dir: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "fastunlearn", "run", "--model", str(model_dir), "--forget", "class:0",
            "--steps", str(STEPS), "--batch-size", "4", "--lr", "1e-3", "--seed", "5", "--no-eval",
            "--device", "cpu", "--checkpoint-every", "1", "--keep-checkpoints", "3", "--quiet",
            "--config", str(config), "--out", str(out)]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}


def _log(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in rows]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def _kill_after_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, step: int, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` as soon as the checkpoint of ``step`` (or a later one) exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ckpt.list_checkpoints(ckpt_dir)
        if found and found[-1][0] >= step:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before checkpoint {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"no checkpoint of step {step} within {timeout} s")


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(tiny_model_dir, tmp_path):
    # log_every 4 with a checkpoint every step: a resumed log line averages steps from before the kill too
    config = tmp_path / "log-every-4.yaml"
    config.write_text("log_every: 4\n")
    straight = subprocess.run(_args(tiny_model_dir, tmp_path / "straight", config), env=_env(),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    kill_step = random.Random(20240606).randint(3, STEPS // 2)
    proc = subprocess.Popen(_args(tiny_model_dir, out, config), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _kill_after_checkpoint(proc, _partial_dir(out) / "checkpoints", kill_step)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run must not leave a half-written output"
    found = ckpt.list_checkpoints(_partial_dir(out) / "checkpoints")
    reached = found[-1][0]
    assert kill_step <= reached < STEPS, f"killed at step {reached}: the kill must land mid-run"
    assert len(found) <= 3, "only the newest --keep-checkpoints are kept"

    # What a checkpoint holds: everything resume needs.
    state = ckpt.load_checkpoint(found[-1][1])
    assert state["step"] == reached
    assert set(state["method"]) >= {"optimizer", "ema"} and state["method"]["ema"] is not None
    assert state["method"]["optimizer"]["state"], "Adam's moments and step counts"
    assert {"torch", "python", "numpy"} <= set(state["rng"])
    assert ("cuda" in state["rng"]) == torch.cuda.is_available()
    assert {"sums", "count", "run_len", "longest", "skipped_total"} <= set(state["loop"])
    assert state["model"].keys() == _weights(tiny_model_dir).keys()

    resumed = subprocess.run([*_args(tiny_model_dir, out, config), "--resume"], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["train"]["resumed_from"] == reached
    assert not _partial_dir(out).exists()

    a, b = _weights(tmp_path / "straight"), _weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after SIGKILL + resume (killed at step {reached})"
    assert _log(out) == _log(tmp_path / "straight"), "the resumed log reads like the uninterrupted one"


def test_resume_skips_a_log_line_cut_short_and_a_half_written_checkpoint(tmp_path):
    from fastunlearn.engine.loop import _trim_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x"')
    _trim_jsonl(log, 2)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    ckpt.save_checkpoint(tmp_path / "c", 1, {"step": 1})
    (tmp_path / "c" / ".step-0000002.pt.abc123.tmp").write_bytes(b"\x80half")
    ckpt.remove_partial_writes(tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["step-0000001.pt"]
