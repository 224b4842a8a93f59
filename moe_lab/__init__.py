"""moe_lab: a workbench for the experts computation of Mixture-of-Experts models."""

from moe_lab.backends import BACKENDS, get_backend
from moe_lab.experts import Experts, ExpertsLayout
from moe_lab.hf import register_with_transformers
from moe_lab.reference import reference_experts, relative_error
from moe_lab.routing import ROUTINGS, synthetic_routing, topk_softmax
from moe_lab.shapes import build_config, build_experts, build_model, get_shape, model_shapes

__all__ = [
    "BACKENDS", "Experts", "ExpertsLayout", "ROUTINGS", "build_config", "build_experts", "build_model",
    "get_backend", "get_shape", "model_shapes", "reference_experts", "register_with_transformers",
    "relative_error", "synthetic_routing", "topk_softmax",
]
