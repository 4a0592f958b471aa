"""The engine: everything a run needs that is not the method (device, precision, compile, batches,
progress, JSONL logs, atomic checkpoints and exact resume). See :mod:`fastunlearn.engine.loop`.
"""
from fastunlearn.engine.loop import (
    LoopResult, LoopSettings, SampleSet, cpu_threads, prepare_model, resolve_device, step_seed, train,
)

__all__ = ["LoopResult", "LoopSettings", "SampleSet", "prepare_model", "resolve_device", "step_seed", "cpu_threads", "train"]
