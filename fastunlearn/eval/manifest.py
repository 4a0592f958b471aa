"""``manifest.json``: the record of what was forgotten, how, and with which result — and its verification.

The manifest answers a data-protection officer's questions without trusting the report:

- *what was forgotten*: the selector, the number of samples, their source indices and the SHA-256 of every
  sample's bytes (the float32 tensor bytes of each preprocessed image, C-contiguous, in forget-set order),
  so anyone holding the data can check that exactly these samples were the forget set;
- *what was kept*: the retain description; *how*: method and every hyperparameter;
- *with what*: library version and git commit, device, start/end times;
- *which model*: SHA-256 of every weight file (``*.safetensors``) before and after;
- *with which result*: metrics before and after, and the exact protocol of the forget metric.

:func:`verify` recomputes the weight hashes of a saved output and re-runs the forget metric with the
recorded protocol (same classes, sample count, DDIM steps, seed). Hashes must match exactly. The metric
must match within :data:`METRIC_TOLERANCE` *or* one flipped judgement (1/n), whichever is larger: on the same
machine and software the seeded sampler is deterministic and the value reproduces exactly, but a different
thread count or BLAS path changes float rounding in the last bits, which can flip the judge's verdict on a
borderline sample. A model that was not really unlearned differs by tens of points, far outside it.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
#: Absolute tolerance of the re-run forget metric (a share in [0, 1]); see the module docstring.
METRIC_TOLERANCE = 0.02
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sample_hashes(images: torch.Tensor) -> list[str]:
    """SHA-256 of each sample's float32, C-contiguous bytes, in order."""
    x = images.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return [sha256_bytes(x[i].numpy().tobytes()) for i in range(x.shape[0])]


def weight_hashes(weights: str | Path | bytes) -> dict[str, Any]:
    """``{"files": {relative path: sha256}, "sha256": digest of the sorted list}`` of a model's weights.

    ``weights`` is a model directory (every ``*.safetensors`` below it; ``*.bin`` only where no safetensors
    exist), a single weight file, or the serialised bytes of an in-memory model.
    """
    if isinstance(weights, (bytes, bytearray)):
        files = {"<bytes>": sha256_bytes(bytes(weights))}
    else:
        root = Path(weights)
        if root.is_file():
            files = {root.name: sha256_file(root)}
        elif root.is_dir():
            found = sorted(p for p in root.rglob("*.safetensors") if p.is_file())
            found = found or sorted(p for p in root.rglob("*.bin") if p.is_file())
            files = {p.relative_to(root).as_posix(): sha256_file(p) for p in found}
        else:
            raise FileNotFoundError(f"no weights at {root}")
        if not files:
            raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) under {root}")
    combined = sha256_bytes("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode())
    return {"files": files, "sha256": combined}


def git_commit(start: str | Path | None = None) -> dict[str, Any]:
    """The git commit (and whether the tree has local changes) of the checkout holding ``start``."""
    where = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def _iso(t: Any) -> str:
    if isinstance(t, (int, float)):
        return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
    if isinstance(t, datetime):
        return t.astimezone().isoformat(timespec="seconds")
    return str(t)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values (anything else by ``str``); None stays None. A mapping's ``images`` entry
    (an evaluation's image grids, never JSON) is left out."""
    if obj is None:
        return None
    if isinstance(obj, dict) and "images" in obj:
        obj = {k: v for k, v in obj.items() if k != "images"}
    return json.loads(json.dumps(obj, default=str))


def build_manifest(
    *,
    selector: Any,
    forget_images: torch.Tensor,
    forget_indices: torch.Tensor | list[int] | None,
    retain_description: str,
    method: str,
    hyperparameters: dict[str, Any],
    weights_before: str | Path | bytes,
    weights_after: str | Path,
    metrics_before: dict[str, Any] | None,
    metrics_after: dict[str, Any] | None,
    started_at: Any,
    ended_at: Any,
    device: str,
    forget_classes: list[int] | None = None,
    eval_protocol: dict[str, Any] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The manifest as a JSON-ready dict.

    Args:
        selector: the forget selector as the user gave it (``"class:0"``, a folder, a list of indices).
        forget_images: the forget set ``[N, C, H, W]`` exactly as trained on (hashed per sample).
        forget_indices: their source indices (``load_digits`` order; -1 for folder images), or None.
        weights_before: the original model's directory / weight file, or its serialised bytes.
        weights_after: the saved output directory (hashes are stored relative to it).
        started_at / ended_at: ``time.time()`` floats or datetimes.
        forget_classes: the forgotten classes (what :func:`verify` re-measures).
        eval_protocol: how the forget metric was measured, for :func:`verify`: ``kind``
            (``"conditional"``/``"unconditional"``), ``classes`` (every class generated, in order: the
            shared seeded generator makes the forget classes' samples depend on it), ``n_per_class`` (or
            ``n`` for unconditional), ``steps``, ``seed``, ``batch_size`` (of ``generation_accuracy``,
            default 250), ``threads`` (the run's ``--threads``, None: the engine's rule) and ``judge``
            (``"zoo:digits-classifier"``). :func:`eval_protocol` builds it from the run's config.
        model: the reference of the original model.
    """
    hashes = sample_hashes(forget_images)
    indices = [int(i) for i in (forget_indices.tolist() if isinstance(forget_indices, torch.Tensor)
                                else forget_indices)] if forget_indices is not None else None
    from fastunlearn._version import __version__

    verification = None
    if eval_protocol is not None and metrics_after is not None:
        kind = eval_protocol.get("kind", metrics_after.get("kind", "conditional"))
        key = "forget_share" if kind == "unconditional" else "forget_accuracy"
        if key in metrics_after:
            verification = {"metric": key, "value": float(metrics_after[key]), "kind": kind,
                            "forget_classes": [int(c) for c in (forget_classes or [])],
                            "tolerance": METRIC_TOLERANCE, "batch_size": 250, **jsonable(eval_protocol)}
    return {
        "manifest_version": MANIFEST_VERSION,
        "forgotten": {"selector": jsonable(selector if not isinstance(selector, Path) else str(selector)),
                      "count": len(hashes), "classes": [int(c) for c in (forget_classes or [])],
                      "indices": indices, "sample_hash": "sha256 of each image's float32 C-contiguous bytes",
                      "sample_sha256": hashes, "set_sha256": sha256_bytes("".join(hashes).encode())},
        "kept": {"description": retain_description},
        "method": {"name": method, "hyperparameters": jsonable(hyperparameters)},
        "model": model,
        "library": {"name": "fastunlearn", "version": __version__, "git": git_commit(),
                    "torch": torch.__version__},
        "weights": {"before": weight_hashes(weights_before), "after": weight_hashes(weights_after)},
        "metrics": {"before": jsonable(metrics_before), "after": jsonable(metrics_after)},
        "verification": verification,
        "started_at": _iso(started_at), "ended_at": _iso(ended_at), "device": str(device),
    }


def eval_protocol(config: Any, classes: list[int], judge: str = "zoo:digits-classifier") -> dict[str, Any]:
    """The forget-metric protocol of :func:`fastunlearn.api.evaluate` for ``config`` (an ``UnlearnConfig``
    or its dict): the value ``build_manifest(eval_protocol=...)`` expects.

    ``classes`` are every class generated, in order (``range(adapter.num_classes)``): the evaluation draws
    them from one seeded generator, so the forget classes' samples depend on the whole list.
    """
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    if get("unconditional", False):
        return {"kind": "unconditional", "n": int(get("eval_unconditional")), "steps": int(get("eval_steps")),
                "seed": int(get("eval_seed")), "threads": get("threads"), "judge": judge}
    return {"kind": "conditional", "classes": [int(c) for c in classes], "n_per_class": int(get("eval_per_class")),
            "steps": int(get("eval_steps")), "seed": int(get("eval_seed")), "threads": get("threads"), "judge": judge}


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``out_dir/manifest.json`` (indented, UTF-8) and return its path."""
    path = Path(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`: ``ok`` when every check passed; ``mismatches`` names the failed fields."""

    ok: bool
    mismatches: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One human-readable line per check."""
        out = []
        for name, c in self.checks.items():
            status = "ok" if c["ok"] else ("skipped" if c.get("skipped") else "MISMATCH")
            detail = c.get("note") or f"expected {c.get('expected')}, got {c.get('got')}"
            out.append(f"{status:8s} {name}: {detail}")
        return out


def _rerun_metric(out_dir: Path, v: dict[str, Any]) -> float:
    """Re-measure the recorded forget metric on the model saved in ``out_dir`` with the recorded protocol."""
    from fastunlearn.engine import cpu_threads
    from fastunlearn.eval.classifier import generation_accuracy, unconditional_class_share
    from fastunlearn.models.ddpm import load_adapter
    from fastunlearn.zoo import load_classifier

    judge_ref = v.get("judge", "zoo:digits-classifier")
    if judge_ref != "zoo:digits-classifier":
        raise ValueError(f"cannot re-create the judge {judge_ref!r}")
    if v["kind"] == "t2i":
        return _rerun_t2i_metric(out_dir, v)
    if v["kind"] == "i2i":  # completions of held-out test digits of the forget classes (fastunlearn.eval.i2i)
        from fastunlearn.eval.i2i import rerun_forget_accuracy

        return rerun_forget_accuracy(out_dir, v)
    adapter = load_adapter(out_dir)
    adapter.unet.eval()
    judge = load_classifier()
    steps = int(v["steps"])

    def sample_fn(n: int, class_labels: torch.Tensor | None, generator: torch.Generator | None = None):
        return adapter.generate(n, class_labels, steps=steps, generator=generator)

    gen = torch.Generator().manual_seed(int(v["seed"]))
    batch = int(v.get("batch_size", 250))
    # The run's thread rule (1 thread for a small model on the CPU): the thread count changes float rounding.
    threads = cpu_threads(adapter, adapter.device, v.get("threads"))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            if v["kind"] == "unconditional":
                return float(unconditional_class_share(sample_fn, judge, int(v["n"]), v["forget_classes"], batch,
                                                       gen)["share_of_classes"])
            res = generation_accuracy(sample_fn, judge, v["classes"], int(v["n_per_class"]), batch, gen)
    finally:
        torch.set_num_threads(before)
    acc = res["accuracy_by_class"]
    return sum(acc[int(c)] for c in v["forget_classes"]) / len(v["forget_classes"])


def _rerun_t2i_metric(out_dir: Path, v: dict[str, Any]) -> float:
    """A text-to-image run's forget accuracy, re-measured: the forget prompts generated from the recorded seeds
    and sampler (:func:`fastunlearn.eval.t2i.evaluate_t2i`) and judged by the shipped digits classifier."""
    from types import SimpleNamespace

    from fastunlearn.engine import cpu_threads
    from fastunlearn.eval.t2i import evaluate_t2i
    from fastunlearn.models import load_model
    from fastunlearn.zoo import load_classifier

    adapter = load_model(out_dir).eval()
    cfg = SimpleNamespace(eval_per_class=int(v["n_per_prompt"]), eval_steps=int(v["steps"]),
                          eval_seed=int(v["seed"]), guidance=float(v["guidance"]))
    threads = cpu_threads(adapter, adapter.device, v.get("threads"))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        res = evaluate_t2i(adapter, cfg, v["forget_prompts"], [], load_classifier(),
                           concept_classes={p: int(c) for p, c in v["concept_classes"].items()})
    finally:
        torch.set_num_threads(before)
    return float(res["forget_accuracy"])


def verify(out_dir: str | Path, rerun_metric: bool = True) -> VerifyResult:
    """Check ``out_dir`` against its ``manifest.json``: weight hashes (exact) and the forget metric (tolerance).

    Raises:
        FileNotFoundError: ``out_dir`` has no manifest.
    """
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no {MANIFEST}")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    checks: dict[str, dict[str, Any]] = {}
    recorded = manifest.get("weights", {}).get("after", {}).get("files", {})
    try:
        current = weight_hashes(out_dir)["files"]
    except FileNotFoundError:
        current = {}
    for rel in sorted(set(recorded) | set(current)):
        exp, got = recorded.get(rel), current.get(rel)
        checks[f"weights.after.{rel}"] = {"ok": exp == got, "expected": exp or "absent", "got": got or "absent"}
    v = manifest.get("verification")
    if not rerun_metric:
        checks["forget_metric"] = {"ok": True, "skipped": True, "note": "not re-run (rerun_metric=False)"}
    elif v is None:
        checks["forget_metric"] = {"ok": True, "skipped": True, "note": "the manifest records no forget metric"}
    else:
        if v["kind"] == "t2i":
            n = len(v["forget_prompts"]) * int(v["n_per_prompt"])
        else:
            n = len(v["forget_classes"]) * int(v.get("n_per_class", 0)) if v["kind"] != "unconditional" else int(v["n"])
        tol = max(float(v.get("tolerance", METRIC_TOLERANCE)), 1.0 / max(n, 1))
        name = f"forget_metric.{v['metric']}"
        try:
            got = _rerun_metric(out_dir, v)
            ok = abs(got - v["value"]) <= tol + 1e-12
            checks[name] = {"ok": ok, "expected": f"{v['value']:.4f}", "got": f"{got:.4f}",
                            "note": f"recorded {v['value']:.4f}, re-measured {got:.4f} (tolerance ±{tol:.4f}, "
                                    f"{n} samples, seed {v['seed']}, {v['steps']} steps)"}
        except Exception as exc:  # a corrupted model that no longer loads is a mismatch, not a crash
            checks[name] = {"ok": False, "expected": f"{v['value']:.4f}", "got": f"error: {exc}".splitlines()[0]}
    mismatches = [k for k, c in checks.items() if not c["ok"]]
    return VerifyResult(ok=not mismatches, mismatches=mismatches, checks=checks)


__all__ = ["build_manifest", "eval_protocol", "write_manifest", "verify", "VerifyResult", "weight_hashes", "sample_hashes",
           "sha256_file", "git_commit", "METRIC_TOLERANCE", "MANIFEST"]
