"""Real MoE model shapes (data/model_shapes.yaml) and what moe_lab builds from them.

From a shape name: a standalone `Experts` layer with random weights, or the whole transformers model
from its config class with random weights (no hub access), optionally cut to fewer layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
import yaml

from moe_lab.experts import Experts, ExpertsLayout


@dataclass(frozen=True)
class ModelShape:
    """The routed-experts shape of one model, and how to build the whole model."""

    name: str
    hf_id: str | None
    hidden: int
    intermediate: int
    experts: int
    top_k: int
    layers: int
    layout: ExpertsLayout
    config_class: str
    config: dict = field(default_factory=dict, hash=False)


SHAPES_FILE = Path(__file__).resolve().parent.parent / "data" / "model_shapes.yaml"


@cache
def model_shapes() -> dict[str, ModelShape]:
    """Every known shape, by name."""
    raw = yaml.safe_load(SHAPES_FILE.read_text())
    return {name: ModelShape(name=name, **{**spec, "layout": ExpertsLayout(**spec["layout"])})
            for name, spec in raw.items()}


def get_shape(name: str) -> ModelShape:
    """The shape called `name`; an unknown name is a ValueError listing the valid ones."""
    shapes = model_shapes()
    if name not in shapes:
        raise ValueError(f"unknown model shape {name!r}; valid: {', '.join(shapes)}")
    return shapes[name]


def build_experts(
    name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    backend: str = "eager", seed: int = 0,
) -> Experts:
    """A standalone experts layer of model `name`, with seeded random weights."""
    shape = get_shape(name)
    return Experts(shape.experts, shape.hidden, shape.intermediate, shape.layout,
                   backend=backend, device=device, dtype=dtype, seed=seed)


def build_config(name: str, *, num_layers: int | None = None, experts_implementation: str | None = None):
    """The transformers config of model `name` (random-weight builds only), optionally with fewer layers."""
    import transformers

    shape = get_shape(name)
    config = getattr(transformers, shape.config_class)(**shape.config)
    if num_layers is not None:
        if not 1 <= num_layers <= shape.layers:
            raise ValueError(f"num_layers must be in [1, {shape.layers}] for {name}, got {num_layers}")
        config.num_hidden_layers = num_layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = config.layer_types[:num_layers]
    if experts_implementation is not None:
        config._experts_implementation = experts_implementation
    return config


def build_model(
    name: str, *, num_layers: int | None = None, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32, experts_implementation: str = "eager", seed: int = 0,
):
    """The whole transformers causal LM of model `name` from its config class, random weights, eval mode."""
    from transformers import AutoModelForCausalLM

    from moe_lab.hf import register_with_transformers

    if experts_implementation.startswith("moe_lab_"):
        register_with_transformers()
    config = build_config(name, num_layers=num_layers)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, experts_implementation=experts_implementation)
    return model.eval()


def hf_experts_class(config) -> type[torch.nn.Module]:
    """The transformers experts class (`@use_experts_implementation`) of the family `config` belongs to."""
    import sys

    from transformers import AutoModelForCausalLM

    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    modeling = sys.modules[model_class.__module__]
    for obj in vars(modeling).values():
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module) and obj.__name__.endswith("Experts") \
                and obj.__module__ == modeling.__name__ and hasattr(obj.__init__, "__wrapped__"):
            return obj
    raise ValueError(f"{modeling.__name__} has no experts class decorated with @use_experts_implementation")


def init_expert_weights_(experts: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with seeded random values: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.01)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in experts.named_parameters():
            if p.is_meta:  # shapes only: drawing the values on the host would cost the whole layer's memory
                continue
            if p.dim() >= 3:
                fan_in = p.shape[1] if getattr(experts, "is_transposed", False) else p.shape[-1]
                values = torch.randn(p.shape, generator=gen) / fan_in**0.5
            elif "norm" in name:
                values = 1 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                values = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(values)
    return experts


def build_hf_experts(
    name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    experts_implementation: str = "eager", seed: int = 0,
) -> torch.nn.Module:
    """The family's own transformers experts module for model `name`, seeded random weights.

    transformers' backends (`experts_implementation`) and moe_lab's (called as functions on the module)
    then run on the very same weights.
    """
    config = build_config(name, experts_implementation=experts_implementation)
    with torch.device(device):
        experts = hf_experts_class(config)(config)
    return init_expert_weights_(experts.to(dtype), seed).eval()
