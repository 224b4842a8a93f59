"""Sweep points: a `Cell` is one measurement, a `SweepGrid` the product of lists of cell fields.

Backend names: every key of `moe_lab.BACKENDS` (read when asked, so backends registered later count)
and transformers' own as `transformers:eager`, `transformers:batched_mm`, `transformers:grouped_mm`.
A grid is validated as a whole before any cell runs; every bad value is named with the valid ones.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch

LEVELS = ("layer", "model", "decode", "train")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HF_PREFIX = "transformers:"
HF_BACKENDS = ("eager", "batched_mm", "grouped_mm")
WHOLE_MODEL_LEVELS = ("model", "decode")  # levels that build the whole transformers model
MODEL_ROUTER = "router"  # the routing column of whole-model cells: the model's own (random-weight) router


def moe_lab_backends() -> list[str]:
    """moe_lab's backends, as registered now."""
    from moe_lab.backends import BACKENDS

    return list(BACKENDS)


def backend_names() -> list[str]:
    """Every backend name a cell accepts: moe_lab's by bare name, then transformers' prefixed ones."""
    return moe_lab_backends() + [HF_PREFIX + name for name in HF_BACKENDS]


def split_backend(name: str) -> tuple[str, str]:
    """('moe_lab' | 'transformers', bare name)."""
    if name.startswith(HF_PREFIX):
        return "transformers", name.removeprefix(HF_PREFIX)
    return "moe_lab", name


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


@dataclass(frozen=True)
class Cell:
    """One measurement: a level, a model shape, a backend, a compile mode, a dtype, a device and a size.

    `num_layers` cuts the whole model at the `model` and `decode` levels (the model's own count when
    a grid leaves it None); it is None at the `layer` and `train` levels, which build one experts layer.
    `routing` is a synthetic routing at `layer`/`train`; whole-model cells route with the model's own
    router, and a grid gives them the routing `router`.
    """

    level: str
    model: str
    backend: str
    compile_mode: str = "none"
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 1
    seq_len: int = 16
    routing: str = "uniform"
    num_layers: int | None = None
    warmup: int = 2
    iters: int = 10
    seed: int = 0

    @property
    def tokens(self) -> int:
        """Tokens through the experts per timed call: one per sequence when decoding, else batch x seq."""
        return self.batch_size if self.level == "decode" else self.batch_size * self.seq_len

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_compiled(self) -> bool:
        return self.compile_mode != "none"

    def key(self) -> tuple[str, ...]:
        """What makes a row this cell's row (the resume key): every field, as the CSV writes it."""
        return tuple("" if v is None else str(v) for v in dataclasses.astuple(self))

    def label(self) -> str:
        """A short name for progress bars: level model backend mode dtype device BxS routing."""
        layers = f" L{self.num_layers}" if self.num_layers is not None else ""
        return (f"{self.level} {self.model}{layers} {self.backend} {self.compile_mode} {self.dtype} {self.device} "
                f"{self.batch_size}x{self.seq_len} {self.routing}")


KEY_FIELDS = tuple(f.name for f in dataclasses.fields(Cell))


def _as_tuple(value, kind=None) -> tuple:
    """A grid field as a tuple: a list, a tuple, one value, or a comma-separated string."""
    if value is None:
        return (None,)
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if kind is int:
        items = [_to_int(v) for v in items]
    return tuple(items)


def _to_int(v):
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null", "all")):
        return None
    if isinstance(v, bool):
        return v  # rejected by validate()
    try:
        return int(v)
    except (TypeError, ValueError):
        return v  # kept as given, so validate() names it


@dataclass(frozen=True)
class SweepGrid:
    """The product of these lists is the sweep; `warmup`, `iters`, `seed` and `max_mem_gb` apply to every cell.

    Every list field also takes one value or a comma-separated string. `backend` may hold `all`
    (every backend in `backend_names()`), `moe_lab` (moe_lab's) or `transformers` (transformers' three).
    `num_layers` cuts the whole model at the `model`/`decode` levels (None: all of the model's layers).
    `max_mem_gb` caps the memory a CPU cell may need (default: the RAM available when it starts).
    """

    level: tuple[str, ...] = LEVELS
    model: tuple[str, ...] = ("tiny",)
    backend: tuple[str, ...] = ("all",)
    compile_mode: tuple[str, ...] = ("none",)
    dtype: tuple[str, ...] = ("float32",)
    device: tuple[str, ...] = ("cpu",)
    batch_size: tuple[int, ...] = (1, 4)
    seq_len: tuple[int, ...] = (16, 128)
    routing: tuple[str, ...] = ("uniform",)
    num_layers: tuple[int | None, ...] = (None,)
    warmup: int = 2
    iters: int = 10
    seed: int = 0
    max_mem_gb: float | None = field(default=None, compare=False)

    LIST_FIELDS = ("level", "model", "backend", "compile_mode", "dtype", "device", "batch_size", "seq_len",
                   "routing", "num_layers")

    def __post_init__(self):
        for name in self.LIST_FIELDS:
            kind = int if name in ("batch_size", "seq_len", "num_layers") else None
            object.__setattr__(self, name, _as_tuple(getattr(self, name), kind))
        object.__setattr__(self, "backend", self._expand_backends(self.backend))
        for name in ("warmup", "iters", "seed"):
            object.__setattr__(self, name, _to_int(getattr(self, name)))

    @staticmethod
    def _expand_backends(names: tuple) -> tuple:
        groups = {"all": backend_names, "moe_lab": moe_lab_backends,
                  "transformers": lambda: [HF_PREFIX + n for n in HF_BACKENDS]}
        out: list = []
        for name in names:
            for n in (groups[name]() if name in groups else [name]):
                if n not in out:
                    out.append(n)
        return tuple(out)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> SweepGrid:
        """A grid from a YAML mapping of field names to values (lists, scalars or comma-separated strings)."""
        import yaml

        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a sweep grid is a mapping of field names to values, got {type(raw).__name__}")
        raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in raw if k not in valid]
        if unknown:
            raise ValueError(f"{path}: unknown grid field(s) {', '.join(map(repr, unknown))}; "
                             f"valid: {', '.join(valid)}")
        return cls(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})

    def validate(self) -> SweepGrid:
        """Raise one ValueError naming every bad value and the valid ones; return self when the grid is good."""
        from moe_lab.routing import ROUTINGS
        from moe_lab.shapes import model_shapes

        shapes = model_shapes()
        problems = []

        def check(name, values, valid):
            for v in values:
                if v not in valid:
                    problems.append(f"unknown {name} {v!r}; valid: {', '.join(map(str, valid))}")

        check("level", self.level, LEVELS)
        check("model", self.model, list(shapes))
        check("backend", self.backend, backend_names() + ["all", "moe_lab", "transformers"])
        check("compile_mode", self.compile_mode, COMPILE_MODES)
        check("dtype", self.dtype, list(DTYPES))
        check("routing", self.routing, ROUTINGS)
        devices = available_devices()
        for d in self.device:
            if d not in devices:
                no_gpu = str(d).startswith("cuda") and not torch.cuda.is_available()
                why = " (no GPU is visible to torch here)" if no_gpu else ""
                problems.append(f"device {d!r} is not available{why}; valid: {', '.join(devices)}")
        for name in ("batch_size", "seq_len"):
            for v in getattr(self, name):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    problems.append(f"{name} must be a positive integer, got {v!r}")
        for v in self.num_layers:
            if v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"num_layers must be a positive integer or None (all), got {v!r}")
                continue
            for m in self.model:
                if m in shapes and v > shapes[m].layers:
                    problems.append(f"num_layers {v} exceeds the {shapes[m].layers} layers of {m!r}; "
                                    f"valid: 1..{shapes[m].layers}")
        for name, low in (("warmup", 0), ("iters", 1), ("seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                problems.append(f"{name} must be an integer >= {low}, got {v!r}")
        if self.max_mem_gb is not None and not (isinstance(self.max_mem_gb, (int, float)) and self.max_mem_gb > 0):
            problems.append(f"max_mem_gb must be a positive number or None, got {self.max_mem_gb!r}")
        for name in self.LIST_FIELDS:
            if not getattr(self, name):
                problems.append(f"{name} is empty; give at least one value")
        if problems:
            raise ValueError("bad sweep grid: " + "; ".join(problems))
        return self

    def cells(self) -> list[Cell]:
        """Every cell of the grid, in a stable order that keeps cells sharing a built model together."""
        from moe_lab.shapes import get_shape

        out, seen = [], set()
        product = itertools.product(self.level, self.model, self.device, self.dtype, self.num_layers,
                                    self.batch_size, self.seq_len, self.routing, self.compile_mode, self.backend)
        for level, model, device, dtype, num_layers, bs, seq, routing, mode, backend in product:
            if level in WHOLE_MODEL_LEVELS:  # the model routes with its own router: one cell, whatever `routing`
                num_layers = get_shape(model).layers if num_layers is None else num_layers
                routing = MODEL_ROUTER
            else:
                num_layers = None
            cell = Cell(level=level, model=model, backend=backend, compile_mode=mode, dtype=dtype, device=device,
                        batch_size=bs, seq_len=seq, routing=routing, num_layers=num_layers,
                        warmup=self.warmup, iters=self.iters, seed=self.seed)
            if cell not in seen:
                seen.add(cell)
                out.append(cell)
        return out

    def to_dict(self) -> dict:
        """Plain lists and scalars, ready for YAML."""
        return {f.name: list(getattr(self, f.name)) if f.name in self.LIST_FIELDS else getattr(self, f.name)
                for f in dataclasses.fields(self)}
