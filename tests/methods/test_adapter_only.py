"""Methods reach the model only through the adapter, and the methods' package does not import the engine.

Text-to-image and image-to-image adapters wrap other denoisers with other call signatures: a method that
reads ``adapter.unet`` or calls the UNet with ``class_labels=`` breaks on them. Two checks: every registered
method sets up and steps on an adapter that exposes the contract and nothing else; and the methods' source
names no adapter internals (the attribute ``unet``, a ``class_labels=`` call, ``_orig_mod``) and imports
neither diffusers nor the engine.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

import fastunlearn.methods
from fastunlearn.methods import base as methods
from fastunlearn.models.ddpm import DDPMAdapter

METHODS_DIR = Path(fastunlearn.methods.__file__).parent

#: The Adapter contract as methods may use it (ARCHITECTURE.md): descriptions and calls, no modules.
CONTRACT = ("conditional", "num_classes", "null_label", "image_shape", "num_train_timesteps", "device",
            "parameters", "named_parameters", "noised_batch", "predict", "generate", "scratch_copy",
            "functional_predict", "train", "eval", "training")


class ContractOnly:
    """An adapter that forwards the contract to a real one and refuses everything else (``unet`` first)."""

    def __init__(self, inner: DDPMAdapter):
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name: str):
        if name not in CONTRACT:
            raise AttributeError(f"a method reached around the adapter: adapter.{name}")
        value = getattr(self._inner, name)
        if name == "scratch_copy":
            return lambda: ContractOnly(value())
        return value

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"a method set adapter.{name}")


def _batch(n: int, classes, seed: int) -> methods.Batch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes)[torch.randint(0, len(classes), (n,), generator=g)]
    return methods.Batch(torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, labels, g)


@pytest.mark.parametrize("name,options", [
    ("erasediff", {"inner_steps": 1}),
    ("erasediff", {"single_forward": True, "target": "uniform"}),
    ("finetune", {}),
    ("gradient_ascent", {}),
    ("salun", {"mask_draws": 1}),
    ("selective_amnesia", {"replay_per_class": 1, "sample_steps": 1}),
])
def test_every_method_runs_through_the_contract_alone(make_tiny_unet, name, options):
    real = DDPMAdapter(make_tiny_unet(), DDPMScheduler(num_train_timesteps=1000), null_label=10)
    before = [p.detach().clone() for p in real.parameters()]
    method = methods.get(name)()
    method.setup(ContractOnly(real), methods.MethodConfig(
        lr=1e-3, options=methods.parse_options(name, options), forget_classes=(0,), retain_classes=(1, 2, 3)))
    metrics = method.step(_batch(4, [0], 1), _batch(4, [1, 2, 3], 2))
    assert float(metrics["skipped"]) == 0.0
    assert any(not torch.equal(b, p) for b, p in zip(before, real.parameters()))


def test_the_contract_only_adapter_catches_a_reach_around(make_tiny_unet):
    adapter = ContractOnly(DDPMAdapter(make_tiny_unet(), null_label=10))
    with pytest.raises(AttributeError, match="adapter.unet"):
        adapter.unet.parameters()


def _reach_arounds(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr in ("unet", "_orig_mod"):
            found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value == "_orig_mod":
            found.append(f"{where} '_orig_mod'")
        elif isinstance(node, ast.keyword) and node.arg == "class_labels":
            found.append(f"{where} class_labels=")
        elif isinstance(node, ast.Constant) and node.value == "class_labels":
            found.append(f"{where} 'class_labels'")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in names:
                if mod.split(".")[0] == "diffusers" or mod.startswith("fastunlearn.engine"):
                    found.append(f"{where} import {mod}")
    return found


def test_methods_source_names_no_adapter_internals():
    files = sorted(METHODS_DIR.glob("*.py"))
    assert len(files) >= 8
    found = [hit for f in files for hit in _reach_arounds(f)]
    assert not found, found


def test_importing_the_methods_does_not_import_the_engine():
    code = ("import sys, fastunlearn.methods\n"
            "bad = sorted(m for m in sys.modules if m == 'fastunlearn.engine' or m.startswith('fastunlearn.engine.'))\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import fastunlearn.methods imported {out.stdout.strip()}"
