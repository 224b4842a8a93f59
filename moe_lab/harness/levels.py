"""The four levels a cell measures, each built outside the timed closure.

- `layer`: one experts layer, the family's own transformers module (`build_hf_experts`), routing
  precomputed by `synthetic_routing`; the timed call is the backend call alone. moe_lab's backends
  are called as functions on that module, transformers' through `config._experts_implementation`,
  so both run on the very same weights.
- `train`: the same layer, forward plus backward (a fixed output gradient) into the input and weights.
- `model`: one prefill forward (`use_cache=False`) of the whole transformers model from its config,
  random weights, cut to `num_layers`; backends switched by `set_experts_implementation`
  (transformers' names, or moe_lab's as `moe_lab_<name>` via `register_with_transformers`).
- `decode`: a prompt of `seq_len` tokens fills a static KV cache (untimed, with transformers' grouped_mm
  whatever the backend, so batched_mm's weight copies of the prompt cannot exhaust memory), then each
  timed call is one decode step of one token per sequence with the cell's backend, inside transformers'
  own decode context (`_optimize_model_for_decode`): on a GPU it switches grouped_mm to batched_mm, as
  `generate` does.

The experts layer and the model are kept between cells that share them (one of each), so a sweep over
backends and sizes builds them once.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cache

import torch

from moe_lab.harness.compile import compile_callable
from moe_lab.harness.grid import Cell, split_backend
from moe_lab.harness.roofline import ExpertsCost, experts_cost


@dataclass
class Workload:
    """A timed closure and what the row needs to know about it."""

    fn: Callable[[], object]
    cost: ExpertsCost
    implementation: str
    notes: list[str] = field(default_factory=list)
    check: Callable[[], str | None] | None = None  # run after warm-up; a message means the cell failed
    stack: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        self.stack.close()


class Unsupported(RuntimeError):
    """Found while running: the cell cannot be measured as asked (its row says `unsupported: ...`)."""


_CACHE: dict[str, tuple[tuple, object]] = {}


def free_memory(device: str | torch.device | None = None) -> None:
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


def clear_caches() -> None:
    """Drop the kept experts layer and model (and their memory)."""
    _CACHE.clear()
    free_memory()


def _cached(kind: str, key: tuple, build: Callable[[], object]):
    entry = _CACHE.get(kind)
    if entry is not None and entry[0] == key:
        return entry[1]
    if entry is not None:
        del _CACHE[kind], entry
        free_memory()
    obj = build()
    _CACHE[kind] = (key, obj)
    return obj


@cache
def count_model_params(model: str, num_layers: int | None = None) -> int:
    """Parameters of the whole model cut to `num_layers`, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    from moe_lab.shapes import build_config

    config = build_config(model, num_layers=num_layers)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in m.parameters())


def _generator(cell: Cell) -> torch.Generator:
    return torch.Generator().manual_seed(cell.seed)


def layer_inputs(cell: Cell):
    """x (T, H) in the cell's dtype, and the cell's synthetic routing (ids int64, weights in the dtype)."""
    from moe_lab.routing import synthetic_routing
    from moe_lab.shapes import get_shape

    shape = get_shape(cell.model)
    T = cell.tokens
    ids_TK, weights_TK = synthetic_routing(cell.routing, T, shape.experts, shape.top_k, seed=cell.seed,
                                           device=cell.device)
    x_TH = torch.randn(T, shape.hidden, generator=_generator(cell)).to(cell.device, cell.torch_dtype)
    return x_TH, ids_TK, weights_TK.to(cell.torch_dtype)


def hf_layer(cell: Cell) -> torch.nn.Module:
    """The family's transformers experts module for the cell's shape, dtype and device (kept between cells)."""
    from moe_lab.shapes import build_hf_experts

    key = (cell.model, cell.device, cell.dtype, cell.seed)
    return _cached("experts", key, lambda: build_hf_experts(cell.model, device=cell.device, dtype=cell.torch_dtype,
                                                            seed=cell.seed))


def hf_model(cell: Cell) -> torch.nn.Module:
    """The whole transformers model for the cell (kept between cells), experts implementation not yet set."""
    from moe_lab.shapes import build_model

    key = (cell.model, cell.num_layers, cell.device, cell.dtype, cell.seed)
    return _cached("model", key, lambda: build_model(cell.model, num_layers=cell.num_layers, device=cell.device,
                                                     dtype=cell.torch_dtype, seed=cell.seed))


def _layer_call(cell: Cell, experts: torch.nn.Module):
    """(call(x, ids, w) -> out, implementation name) for the cell's backend on `experts`, compiled as asked."""
    origin, name = split_backend(cell.backend)
    if origin == "transformers":
        experts.config._experts_implementation = name
        module = compile_callable(experts, cell.compile_mode)
        return (lambda x, ids, w: module(x, ids, w)), f"transformers experts_implementation={name}"
    from moe_lab.backends import get_backend

    backend = get_backend(name)
    compiled = compile_callable(backend, cell.compile_mode)
    return (lambda x, ids, w: compiled(experts, x, ids, w)), f"{backend.__module__}.{backend.__name__}"


def build_layer(cell: Cell, warmup: int) -> Workload:
    from moe_lab.shapes import get_shape

    experts = hf_layer(cell)
    x_TH, ids_TK, w_TK = layer_inputs(cell)
    call, implementation = _layer_call(cell, experts)

    def fn():
        with torch.no_grad():
            return call(x_TH, ids_TK, w_TK)

    cost = experts_cost(get_shape(cell.model), ids_TK, cell.torch_dtype.itemsize)
    return Workload(fn, cost, implementation)


def build_train(cell: Cell, warmup: int) -> Workload:
    from moe_lab.shapes import get_shape

    experts = hf_layer(cell)
    x_TH, ids_TK, w_TK = layer_inputs(cell)
    x_TH.requires_grad_(True)
    params = [p for p in experts.parameters()]
    for p in params:
        p.requires_grad_(True)
    call, implementation = _layer_call(cell, experts)
    grad_out_TH = torch.randn(x_TH.shape, generator=_generator(cell)).to(cell.device, cell.torch_dtype)

    def fn():
        for p in params:
            p.grad = None
        x_TH.grad = None
        out_TH = call(x_TH, ids_TK, w_TK)
        if not out_TH.requires_grad:  # metadata only: no sync
            raise Unsupported(f"{cell.backend}'s output carries no gradient (a forward-only path ran): no train level")
        out_TH.backward(grad_out_TH)

    def check() -> str | None:
        named = [("input", x_TH)] + [(n, p) for n, p in experts.named_parameters() if p.dim() >= 3]
        for name, t in named:
            if t.grad is None:
                return f"no gradient reached {name}"
            if not torch.isfinite(t.grad).all():
                return f"non-finite gradient in {name}"
            if not t.grad.abs().sum() > 0:
                return f"zero gradient in {name}"
        return None

    workload = Workload(fn, experts_cost(get_shape(cell.model), ids_TK, cell.torch_dtype.itemsize, train=True),
                        implementation, check=check)
    workload.stack.callback(lambda: [setattr(p, "grad", None) for p in params])
    return workload


def _model_implementation(cell: Cell) -> str:
    origin, name = split_backend(cell.backend)
    if origin == "transformers":
        return name
    from moe_lab.hf import PREFIX, register_with_transformers

    register_with_transformers()
    return PREFIX + name


def _count_cost(cell: Cell, model: torch.nn.Module, call: Callable[[], object]) -> ExpertsCost:
    """Run `call` once (untimed) with hooks on every experts module, summing the cost of the routings seen."""
    from moe_lab.shapes import get_shape, hf_experts_class

    shape = get_shape(cell.model)
    experts_cls = hf_experts_class(model.config)
    costs: list[ExpertsCost] = []

    def hook(module, args, kwargs):
        ids = args[1] if len(args) > 1 else kwargs.get("top_k_index")
        if ids is not None:
            costs.append(experts_cost(shape, ids.reshape(-1, ids.shape[-1]), cell.torch_dtype.itemsize))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, experts_cls)]
    try:
        with torch.no_grad():
            call()
    finally:
        for h in handles:
            h.remove()
    if not costs:
        return ExpertsCost(float("nan"), float("nan"), float("nan"))
    total = sum(costs[1:], costs[0])
    return ExpertsCost(total.flops, total.bytes, total.experts_hit / len(costs))


def build_model_level(cell: Cell, warmup: int) -> Workload:
    model = hf_model(cell)
    implementation = _model_implementation(cell)
    model.set_experts_implementation(implementation)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (cell.batch_size, cell.seq_len), generator=_generator(cell)).to(cell.device)
    cost = _count_cost(cell, model, lambda: model(input_ids=ids, use_cache=False))
    call = compile_callable(model, cell.compile_mode)

    def fn():
        with torch.no_grad():
            return call(input_ids=ids, use_cache=False)

    return Workload(fn, cost, f"experts_implementation={implementation}")


def build_decode(cell: Cell, warmup: int) -> Workload:
    from transformers import StaticCache

    model = hf_model(cell)
    implementation = _model_implementation(cell)
    model.set_experts_implementation(implementation)
    vocab = model.config.get_text_config().vocab_size
    gen = _generator(cell)
    prompt = torch.randint(0, vocab, (cell.batch_size, cell.seq_len), generator=gen).to(cell.device)
    token = torch.randint(0, vocab, (cell.batch_size, 1), generator=gen).to(cell.device)
    cache = StaticCache(config=model.config, max_cache_len=cell.seq_len + warmup + cell.iters + 2)
    # the untimed prefill runs transformers' grouped_mm, which copies no weights, whatever the cell's backend:
    # batched_mm would gather batch x seq x K weight matrices (Qwen1.5 at 16x128: 88 GiB) for a step not measured
    model.set_experts_implementation(PREFILL_IMPLEMENTATION)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
    model.set_experts_implementation(implementation)

    workload = Workload(lambda: None, ExpertsCost(0, 0, 0), "")
    workload.stack.callback(model.set_experts_implementation, implementation)
    try:
        return _decode_steps(cell, model, implementation, token, cache, workload)
    except BaseException:
        workload.close()
        raise


def _decode_steps(cell, model, implementation, token, cache, workload) -> Workload:
    notes = []
    decode_context = getattr(model, "_optimize_model_for_decode", None)
    if decode_context is not None:
        workload.stack.enter_context(decode_context())
    running = model.get_experts_implementation().get("", implementation)
    if running != implementation:
        notes.append(f"fallback:{running}: transformers decodes with {running} instead of {implementation} "
                     f"on {torch.device(cell.device).type} (generate's decode stage)")
    step = lambda m: m(input_ids=token, past_key_values=cache, use_cache=True)  # noqa: E731
    workload.cost = _count_cost(cell, model, lambda: step(model))  # one untimed step, counted
    call = compile_callable(model, cell.compile_mode)

    def fn():
        with torch.no_grad():
            return step(call)

    workload.fn, workload.notes = fn, notes
    workload.implementation = f"experts_implementation={running}"
    return workload


PREFILL_IMPLEMENTATION = "grouped_mm"

BUILDERS = {"layer": build_layer, "train": build_train, "model": build_model_level, "decode": build_decode}


def build_workload(cell: Cell, warmup: int) -> Workload:
    """The timed closure of `cell`; `warmup` is the number of warm-up calls it will get (sizes caches)."""
    return BUILDERS[cell.level](cell, warmup)
