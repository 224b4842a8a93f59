"""Programmatic dependent launch (PDL): the next kernel of a call starts while this one finishes.

A call is a chain of launches (alignment, gate/up, down, top-k sum). Launched with PDL (compute
capability 9.0+), a kernel may start once every program of the kernel before it has begun, instead of
once that kernel has ended: its launch, its programs' start-up and the previous kernel's last partial
wave overlap. Each kernel's first statement is `pdl_enter`:

- `gdc_launch_dependents`: this program no longer holds back the next kernel's launch;
- `gdc_wait`: block until the previous kernel has completed and its writes are visible.

Nothing is read or written before the wait, so each kernel still sees everything the kernels before it
wrote (each waits on the one before, which waited on the one before it), whatever precedes the chain.
The exception is a `"SPLIT": 1` call, whose GEMMs and sum order their reads by done-counters (`ready`).
With PDL off (`PDL=False`, older GPUs, Triton's interpreter) nothing of this is compiled.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from moe_lab.kernels import INTERPRETED


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


def pdl_available(device: torch.device) -> bool:
    """Whether kernels on `device` can be launched with PDL: compiled CUDA kernels, compute capability 9.0+."""
    return not INTERPRETED and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


@triton.jit
def pdl_wait_then_launch(PDL: tl.constexpr):
    """`pdl_enter` in the other order: the next launch goes only once this one's programs have all passed their
    wait (gate/up under `ready`: down must not read a counter before the alignment zeroes it)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def pdl_launch(PDL: tl.constexpr):
    """Let the next launch go, with no wait here: for a kernel that orders its reads itself (`ready`)."""
    if PDL:
        gdc_launch_dependents()
