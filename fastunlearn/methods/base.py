"""The Method contract and the registry of methods.

A method composes an adapter, the fused ops and an optimizer into one update rule. It owns no device,
precision, distribution or checkpoint logic — the engine does (ARCHITECTURE.md): the engine hands it a
forget batch and a retain batch per step, runs :meth:`Method.step` under its autocast, and saves
:meth:`Method.state_dict` with the model in its checkpoints.

Options: each method declares an ``Options`` dataclass (names, defaults, allowed values). Users pass
them flat (``fastunlearn.run(..., lambda_rule="cosine")``, ``--option lambda_rule=cosine``) and
:func:`parse_options` turns them into a validated instance, with errors that list what exists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

import torch

from fastunlearn.errors import UserInputError


@dataclass
class Batch:
    """Clean samples of one side (forget or retain) for one step.

    ``generator`` is the step's CPU generator (seeded from (seed, step) by the engine): every random draw
    of the step — timesteps, noise, pseudo-labels — comes from it, which is what makes resume exact.

    ``rows`` are the rows this process computes. In a multi-process run the engine hands every process the
    whole global batch and a contiguous slice of it; a method makes each per-row random draw for ALL rows
    (so the draws do not depend on the number of processes) and computes on ``rows`` only: it passes
    ``rows=batch.rows`` to the adapter's ``noised_batch`` and takes ``batch.local(x)`` of any other per-row
    draw. One process: all rows.
    """

    images: torch.Tensor  #: ``[N, C, H, W]`` in [-1, 1]
    labels: torch.Tensor  #: ``[N]`` int64 class labels (ignored by unconditional models)
    generator: torch.Generator
    rows: slice = dataclasses.field(default_factory=lambda: slice(None))

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a per-row tensor drawn for the whole batch."""
        return x[self.rows]


@dataclass(frozen=True)
class MethodConfig:
    """What :meth:`Method.setup` needs from the run's configuration, already resolved by the API."""

    lr: float
    options: Any  #: the method's ``Options`` instance
    forget_classes: tuple[int, ...] = ()
    retain_classes: tuple[int, ...] = ()
    unconditional: bool = False
    scope: str = "all"
    #: use torch's fused Adam (resolved per device by the engine's fast path); it also lets a non-finite
    #: step be skipped on the device (``found_inf``)
    fused_optimizer: bool = False
    #: the gradient sync (the interface :class:`fastunlearn.methods.sync.GradientSync`, implemented by the engine
    #: for many processes): makes a flat gradient buffer the global-batch gradient; None: one process
    grad_sync: Any = None


@runtime_checkable
class Method(Protocol):
    """``setup(adapter, config)`` once, then ``step(forget_batch, retain_batch) -> metrics`` per step.

    ``step`` returns device tensors (0-dim) keyed by metric name and must not synchronise with the host;
    the engine reads them every few steps.
    """

    name: ClassVar[str]
    Options: ClassVar[type]

    def setup(self, adapter: Any, config: MethodConfig) -> None: ...

    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def finalize(self) -> None: ...


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a method available as ``method=name``."""

    def decorator(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type:
    """The method class registered as ``name``; a :class:`UserInputError` listing known methods otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserInputError(f"unknown method {name!r}; known methods: {', '.join(available())}") from None


def option_names(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get(method).Options)]


def _coerce(value: Any, default: Any, key: str, method: str) -> Any:
    """Convert CLI strings to the option's type (inferred from its default)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserInputError(f"{method} option {key!r} must be true or false, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserInputError(f"{method} option {key!r} must be a number, got {value!r}") from None
        if isinstance(default, int):
            if not number.is_integer():
                raise UserInputError(f"{method} option {key!r} must be an integer, got {value!r}")
            return int(number)
        return number
    if isinstance(default, str) and not isinstance(value, str):
        raise UserInputError(f"{method} option {key!r} must be a string, got {value!r}")
    return value


def parse_options(method: str, options: Mapping[str, Any] | None) -> Any:
    """A validated ``Options`` instance of ``method`` from a flat mapping of user-given values.

    Unknown keys raise a :class:`UserInputError` listing the method's options; values are converted to
    the default's type (an option whose declared default is None, meaning "the method's default", takes the
    type of the value its ``__post_init__`` fills in); the dataclass's ``validate()`` (if any) checks ranges and
    choices.
    """
    cls = get(method).Options
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    values = {}
    for key, value in (options or {}).items():
        if key not in fields:
            raise UserInputError(f"unknown option {key!r} for method {method!r}; its options: {', '.join(fields)}")
        if value is None and fields[key].default is None:  # None: "the method's default", filled in by cls
            values[key] = None
            continue
        values[key] = _coerce(value, getattr(defaults, key), key, method)
    parsed = cls(**values)
    validate = getattr(parsed, "validate", None)
    if validate is not None:
        validate()
    return parsed


__all__ = ["Batch", "MethodConfig", "Method", "register", "get", "available", "option_names", "parse_options"]
