"""Checkpoints: atomic writes, rotation, and the state that makes resume exact.

A checkpoint holds the model weights, the method's state (optimizer moments, EMA), the step reached, every
RNG state and the run's training fingerprint. It is written to a temporary file in the same directory and
moved into place with ``os.replace`` (atomic on POSIX and Windows), so a crash mid-write leaves the previous
checkpoint intact and never a truncated one under the final name.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastunlearn.errors import UserInputError

_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step-{step:07d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    """Every global RNG a run may touch (ours draw from per-step generators, but user code may not).

    Only tensors and plain Python values, so the checkpoint loads with ``torch.load(weights_only=True)``:
    numpy's state ``(name, uint32[624] keys, pos, has_gauss, cached_gaussian)`` keeps its keys as an int64
    tensor (exact: they are < 2³²).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_partial_writes(directory: Path) -> None:
    """Delete the temporary files of writes that never finished (a process killed mid-save)."""
    directory = Path(directory)
    if directory.is_dir():
        for tmp in directory.glob(".step-*.pt.*.tmp"):
            tmp.unlink(missing_ok=True)


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as ``step-NNNNNNN.pt`` atomically, then drop all but the newest ``keep`` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, step)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for _, old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def _unpickler_reason(exc: BaseException) -> str:
    """The one line of torch's weights-only refusal that says what was refused."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error:"):
            return ln.split(". Please use")[0]
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU (tensors are moved by their owners' ``load_state_dict``).

    With ``weights_only=True``: a checkpoint holds only tensors, numbers, strings and containers of them
    (see :func:`rng_state`), so nothing in the file can run code, even one that was tampered with.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserInputError(
            f"cannot read checkpoint {path} safely (weights_only=True): {_unpickler_reason(exc)}. It was not "
            "written by this version of fastunlearn; start the run again without --resume"
        ) from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise UserInputError(f"cannot read checkpoint {path}: {exc}") from None


__all__ = [
    "checkpoint_path", "list_checkpoints", "latest_checkpoint", "save_checkpoint", "load_checkpoint",
    "rng_state", "set_rng_state", "remove_partial_writes",
]
