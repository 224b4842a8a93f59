"""A short name for the kind of device a tensor lives on, the key of tuned tables (`h100`, `cpu`, ...).

Read from the device's properties once per device and cached: no host synchronisation.
"""

from __future__ import annotations

import re
from functools import cache

import torch

_KNOWN = ("H100", "H200", "H20", "H800", "A100", "A10G", "L40S", "L4", "B200", "GB200")


@cache
def _cuda_kind(index: int) -> str:
    name = torch.cuda.get_device_name(index)
    for known in _KNOWN:
        if re.search(rf"\b{known}\b", name):
            return known.lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def device_kind(device: torch.device | str) -> str:
    """`h100`, `a100`, ... for CUDA devices (from the device name), else the device type (`cpu`, `mps`)."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    return _cuda_kind(device.index if device.index is not None else torch.cuda.current_device())
