"""transformers integration: moe_lab's backends in `ExpertsInterface` as `moe_lab_<backend>`."""

from __future__ import annotations

from moe_lab.backends import BACKENDS

PREFIX = "moe_lab_"


def register_with_transformers() -> list[str]:
    """Register every moe_lab backend in transformers' `ExpertsInterface`; return the names registered.

    Afterwards `from_config(cfg, experts_implementation="moe_lab_grouped_mm")` and
    `model.set_experts_implementation("moe_lab_batched_mm")` work on every family whose experts class
    uses `@use_experts_implementation`.
    """
    from transformers.integrations.moe import ExpertsInterface

    names = []
    for name, fn in BACKENDS.items():
        ExpertsInterface.register(PREFIX + name, fn)
        names.append(PREFIX + name)
    return names
