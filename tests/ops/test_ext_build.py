"""Loading the C++ extension: the JIT build from a clean cache, its reuse, and the graceful fallbacks.

Each case runs in a subprocess: the loader caches its outcome per process, and the ops library can be
registered only once per process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_PROBE = r"""
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from fastunlearn.ops import _ext
    module = _ext.load()
    status = _ext.status()
ran = None
if module is not None:
    import torch
    pred, target = torch.arange(6.0).view(3, 2), torch.zeros(3, 2)
    ran = torch.ops.fastunlearn.dual_noise_loss_forward(pred, target, 1).tolist()
print(json.dumps({"status": status, "ran": ran, "warnings": [str(w.message) for w in caught]}))
"""


def _probe(tmp_path: Path, **env_overrides: str) -> tuple[dict, str]:
    env = dict(os.environ)
    for key in ("FASTUNLEARN_NO_EXT", "FASTUNLEARN_FORCE_JIT", "FASTUNLEARN_CACHE_DIR"):
        env.pop(key, None)
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env.update(env_overrides)
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, f"probe failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_jit_build_from_clean_cache_then_reuse(tmp_path):
    cache = tmp_path / "cache"
    result, stderr = _probe(tmp_path, FASTUNLEARN_FORCE_JIT="1", FASTUNLEARN_CACHE_DIR=str(cache))
    status = result["status"]
    assert status["available"] and status["mode"] == "jit", status
    assert status["devices"][0] == "cpu"
    assert Path(status["cache_dir"]).parent == cache
    # (0^2 + 1^2) / 2 for the forget row; (4 + 9 + 16 + 25) / 4 for the two retain rows.
    assert result["ran"] == [0.5, 13.5]
    building = [line for line in stderr.splitlines() if line.startswith("fastunlearn: building the C++ extension")]
    assert len(building) == 1, stderr
    assert result["warnings"] == []

    again, stderr = _probe(tmp_path, FASTUNLEARN_FORCE_JIT="1", FASTUNLEARN_CACHE_DIR=str(cache))
    assert again["status"]["mode"] == "jit" and again["ran"] == [0.5, 13.5]
    assert "building" not in stderr, "a cached build must not rebuild"


def test_no_ext_env_disables_without_raising(tmp_path):
    result, _ = _probe(tmp_path, FASTUNLEARN_NO_EXT="1")
    status = result["status"]
    assert status["available"] is False and status["mode"] is None
    assert "FASTUNLEARN_NO_EXT" in status["reason"]
    assert result["ran"] is None


def test_missing_compiler_warns_once_and_falls_back(tmp_path):
    result, _ = _probe(tmp_path, FASTUNLEARN_FORCE_JIT="1", FASTUNLEARN_CACHE_DIR=str(tmp_path / "cache"),
                       CXX="/nonexistent/c++")
    status = result["status"]
    assert status["available"] is False
    assert "no C++ compiler" in status["reason"]
    assert len(result["warnings"]) == 1
    assert "Triton/reference backends will be used" in result["warnings"][0]
