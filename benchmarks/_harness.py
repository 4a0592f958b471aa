"""Shared benchmark harness: timing with warm-up and percentiles, the machine's description, CSV rows.

Every speed claim in fastunlearn is a ratio of two timings taken in the same run by a script in this
folder; this module holds what those scripts share.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fastunlearn.eval.manifest import git_commit

RESULTS = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def short_commit() -> str:
    """The checkout's commit, abbreviated (7 hex digits) as the results CSVs record it: the package's
    :func:`fastunlearn.eval.manifest.git_commit` asked about this folder's checkout."""
    return git_commit(Path(__file__).resolve().parent)["commit"][:7]


def environment(device: torch.device) -> dict:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": device_name(device),
        "torch": torch.__version__,
        "commit": short_commit(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> dict:
    """Median and 20th/80th percentile wall time of ``fn`` in milliseconds (device-synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return {"median_ms": statistics.median(times), "p20_ms": q[0], "p80_ms": q[3], "reps": reps}


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append rows (dicts with the same keys) to a CSV, writing the header for a new file."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != list(rows[0]):
            raise SystemExit(f"{path}: its columns {header} are not this benchmark's {list(rows[0])}; "
                             "move the old file aside (it is in git history) and run again")
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).rjust(widths[c]) for c in columns))


def read_printed_table(stdout: str, column: str, key: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, str]]:
    """The table :func:`print_table` wrote into ``stdout`` — the first line with `` column `` is its header — as
    ``{(row[k] for k in key): {column: value}}``, read up to a line starting ``speedup =`` or the end. Columns are
    right-justified two spaces apart, so a column ends where its name ends; blank cells read as ""."""
    start = stdout.rindex("\n", 0, stdout.index(f" {column} ")) + 1
    lines = stdout[start:].splitlines()
    spans, left = {}, 0
    for m in re.finditer(r"\S+", lines[0]):
        spans[m.group()] = (left, m.end())
        left = m.end() + 2
    out = {}
    for line in lines[1:]:
        if line.startswith("speedup ="):
            break
        row = {name: line[a:b].strip() for name, (a, b) in spans.items()}
        out[tuple(row[k] for k in key)] = row
    return out


def library_fast_paths(device: torch.device, adapter: Any = None) -> dict[str, Any]:
    """{row name: fast path}: fp32 without compile first; the model's device default (``fastunlearn``) when it
    differs; and bf16 autocast (``fastunlearn-bf16``) where the device has it and the default is not it (the
    masked autoencoder on a CPU: its default is fp32, and this row shows why)."""
    from fastunlearn.config import UnlearnConfig
    from fastunlearn.engine import resolve_fast_path

    fp32 = resolve_fast_path(UnlearnConfig(precision="fp32", compile=False), device)
    default = resolve_fast_path(UnlearnConfig(), device, adapter)
    names = {"fastunlearn-fp32": fp32}
    if (default.precision, default.compile) != (fp32.precision, fp32.compile):
        names["fastunlearn"] = default
    elif resolve_fast_path(UnlearnConfig(), device).precision == "bf16":
        names["fastunlearn-bf16"] = resolve_fast_path(UnlearnConfig(precision="bf16"), device)
    return names
