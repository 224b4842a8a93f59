"""Compile modes, and transformers' torch.compile compatibility table for its experts backends.

transformers' table (docs/source/en/experts_interface.md, "torch.compile"):

| implementation          | compile modes                        | dtypes                   |
| ----------------------- | ------------------------------------ | ------------------------ |
| `grouped_mm`            | `None`, `max-autotune-no-cudagraphs` | bfloat16                 |
| `grouped_mm` (fallback) | `None`, `max-autotune-no-cudagraphs` | bfloat16, float16, float32 |
| `batched_mm`            | all                                  | bfloat16, float16, float32 |
| `eager`                 | all                                  | bfloat16, float16, float32 |

so grouped_mm with CUDA graphs (`reduce-overhead`, `max-autotune`) is unsupported, and compiled
grouped_mm in another dtype than bfloat16 runs transformers' per-expert loop. `compat(cell)` turns that
into a decision and row statuses. moe_lab's backends may declare `device_types` (where they run)
and `differentiable = False` (forward only); a cell outside those is `unsupported`. They report
their fallbacks through the `moe_lab` logger, which the harness records while a cell runs
(`capture_fallbacks`).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from moe_lab.harness.grid import CUDAGRAPH_MODES, Cell, split_backend


@dataclass
class Decision:
    run: bool = True
    notes: list[str] = field(default_factory=list)  # row statuses: 'fallback:...' or 'unsupported: ...'


def _backend_refuses(name: str, level: str, device: str) -> str | None:
    """What a moe_lab backend declares it cannot do: `device_types` it runs on, `differentiable = False`."""
    from moe_lab.backends import BACKENDS

    fn = BACKENDS.get(name)
    device_types = getattr(fn, "device_types", None)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # Triton kernels then run on the CPU too
    if device_types is not None and device not in device_types and not (device == "cpu" and interpreted):
        return f"{name} runs on {', '.join(device_types)} only (its device_types), not {device}"
    if level == "train" and getattr(fn, "differentiable", True) is False:
        return f"{name} is forward only (differentiable = False): no train level"
    return None


def compat(cell: Cell) -> Decision:
    """Whether `cell` runs, and what its status must say, from transformers' table and the device."""
    origin, name = split_backend(cell.backend)
    device = torch.device(cell.device).type
    decision = Decision()
    if origin == "moe_lab":
        reason = _backend_refuses(name, cell.level, device)
        if reason:
            decision.run = False
            decision.notes.append(f"unsupported: {reason}")
            return decision
    if not cell.is_compiled:
        return decision
    # at the decode level on a GPU transformers decodes with batched_mm instead of grouped_mm (see levels)
    decode_switch = cell.level == "decode" and device != "cpu"
    if origin == "transformers" and name == "grouped_mm" and not decode_switch:
        if cell.compile_mode in CUDAGRAPH_MODES and device == "cuda":
            decision.run = False
            decision.notes.append(
                f"unsupported: transformers' compatibility table: grouped_mm is not compatible with CUDA graphs "
                f"(mode {cell.compile_mode!r}); use 'default' or 'max-autotune-no-cudagraphs'")
            return decision
        if cell.dtype != "bfloat16":
            decision.notes.append(
                f"fallback:grouped_mm_fallback: transformers' compatibility table: compiled grouped_mm runs "
                f"bfloat16 only; {cell.dtype} runs its per-expert loop")
    if cell.compile_mode in CUDAGRAPH_MODES and device != "cuda":
        decision.notes.append(
            f"fallback:no-cudagraphs: CUDA graphs need a GPU; torch.compile ran mode {cell.compile_mode!r} "
            f"without them on {device}")
    return decision


def compile_callable(obj, mode: str):
    """`obj` unchanged for mode 'none', else `torch.compile(obj, mode=...)` ('default' passes no mode)."""
    if mode == "none":
        return obj
    return torch.compile(obj, mode=None if mode == "default" else mode)


def min_warmup(cell: Cell) -> int:
    """Warm-up calls a cell needs at least: 1 to compile, 3 to record and replay CUDA graphs."""
    if not cell.is_compiled:
        return 0
    return 3 if cell.compile_mode in CUDAGRAPH_MODES else 1


def reset_compiler() -> None:
    """Forget compiled code and CUDA-graph pools, so each compiled cell compiles afresh and alone."""
    torch._dynamo.reset()


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record):
        msg = record.getMessage()
        if msg not in self.sink:
            self.sink.append(msg)


@contextmanager
def capture_fallbacks():
    """Collect the fallbacks moe_lab's backends announce (once per process, so the memory is cleared)."""
    from moe_lab.backends import common

    seen = getattr(common, "_logged", None)
    if isinstance(seen, set):
        seen.clear()
    messages: list[str] = []
    handler = _Collect(messages)
    logger = logging.getLogger("moe_lab")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
