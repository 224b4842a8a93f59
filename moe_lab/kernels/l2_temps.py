"""A call's temporaries kept in L2 while they live and dropped from it, unwritten, once dead (`"TEMPS_L2"`).

The Triton-tile path writes two buffers that live only within one call: the intermediate a (P, I), written
by gate/up and read by down, and y (S, H), written by down and read by the top-k sum. Each is written
while the weights stream through L2 (0.8 GB at OLMoE T=512), which pushes the lines written early out to
DRAM before they are read back: twice the buffer's bytes moved for nothing. With a config's
`"TEMPS_L2": 1` both GEMMs store their outputs evict-last, so the weights go first, and the top-k sum,
the call's last kernel, ends the marks by `discard.global.L2`: the lines are dropped without being written
back, since nothing reads them again (a mark left behind would outlive the call: run 18's probe had one
survive a 256 MiB flush). Discards touch only whole 128-byte lines inside a buffer, so no neighbour's
bytes are lost. Compiled sm80+ kernels only (`l2_hints_available`): the interpreter runs no PTX.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moe_lab.kernels import INTERPRETED

LINE = 128  # bytes per L2 line


def l2_hints_available(device: torch.device) -> bool:
    """Whether kernels on `device` can carry the L2 eviction hints and discards: compiled CUDA, sm80+."""
    return not INTERPRETED and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


@triton.jit
def discard_line_addrs(addr):
    """`discard.global.L2` of the 128-byte line at each (line-aligned, int64) address in `addr`."""
    tl.inline_asm_elementwise("discard.global.L2 [$1], 128;\n\tmov.u32 $0, 0;", "=r,l", [addr], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def discard_share(ptr, nbytes, LINES: tl.constexpr):
    """Discard this program's share of the whole lines inside the nbytes at ptr, split evenly over every
    program of the grid; for a buffer that is dead (no program reads it again)."""
    base = ptr.to(tl.int64)
    first = (base + 127) // 128
    n_lines = (base + nbytes) // 128 - first
    n_prog = tl.num_programs(0) * tl.num_programs(1)
    per = tl.cdiv(n_lines, n_prog)
    lo = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * per
    hi = tl.minimum(lo + per, n_lines)
    for line0 in range(lo, hi, LINES):
        line = line0 + tl.arange(0, LINES)
        discard_line_addrs((first + tl.where(line < hi, line, lo)) * 128)
