"""The engine: everything a run needs that is not the method — the fast path (device, precision, compile,
attention, memory format, fused optimizer: :mod:`fastunlearn.engine.fastpath`), and the loop (batches,
progress, JSONL logs, non-finite and out-of-memory guards, atomic checkpoints and exact resume:
:mod:`fastunlearn.engine.loop`).
"""
from fastunlearn.engine.fastpath import FastPath, prepare_model, resolve_fast_path
from fastunlearn.engine.loop import LoopResult, LoopSettings, SampleSet, cpu_threads, resolve_device, step_seed, train

__all__ = ["FastPath", "LoopResult", "LoopSettings", "SampleSet", "prepare_model", "resolve_fast_path",
           "resolve_device", "step_seed", "cpu_threads", "train"]
