"""Done-counters that order a `"SPLIT": 1` call's launches on its one stream (`ops.Plan`).

SPLIT runs down in two parts of the row blocks, so that part one's down starts beside gate/up's last wave and
part two's down fills part one's last wave. The launches are chained by PDL: alignment, gate/up over all blocks,
down over part one, down over part two, the top-k sum. A PDL wait (`gdc_wait`) waits for the launch just
before, which is not always the one a kernel reads, so:

- gate/up waits for the alignment before it lets the next launch go (`pdl_wait_then_launch`), and each of its
  programs bumps its part's counter after its stores (release, GPU scope), programs past the last block too;
- down over a part does not wait on the launch before it: each program spins (acquiring loads) until its part's gate/up
  counter is full; part one's programs then bump a third counter after their stores;
- the sum waits on part two's down (PDL) and spins on part one's counter.

The alignment zeroes the three counters (stored after `expert_block`). Nothing can hang: a launch goes only once
every program of the one before has started, so when a program spins, every program it waits for is already on
the GPU or done, and none of those waits on a spinning one. Without PDL each launch starts after the one before
has ended, and every counter is full before anyone reads it.

Until run 28 the second part ran on a side stream, forked from the caller's after the alignment and joined
before the sum. That raced: under PDL the caller's stream runs gate/up ahead of the alignment's end, and the fork
event recorded between the two could let the side stream start on an alignment still being written (calls queued
back to back gave wrong rows at qwen1.5 T=256 and 1024; notes, "Run 28").
"""

from __future__ import annotations

import triton
import triton.language as tl

from moe_lab.kernels import INTERPRETED

COUNTERS = 3  # gate/up's part one, gate/up's part two, down's part one
_PROXY_FENCE = tl.constexpr(not INTERPRETED)  # the interpreter runs no PTX (no fence, no inline load)


@triton.jit
def signal_done(counter_ptr):
    """After a program's stores: one more program of this counter's launch is done."""
    tl.debug_barrier()  # every thread's stores are issued before the one thread that bumps the count
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _load_acquire(counter_ptr):
    """The counter, read with acquire semantics at GPU scope by a plain load: hundreds of programs spin on one
    counter, and an atomic read-modify-write (the interpreter's way) would queue them at its L2 line."""
    if _PROXY_FENCE:
        got = tl.inline_asm_elementwise("ld.global.acquire.gpu.b32 $0, [$1];", "=r,l", [counter_ptr + tl.arange(0, 1)],
                                        dtype=tl.int32, is_pure=False, pack=1)
        return tl.max(got, axis=0)
    return tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")


@triton.jit
def wait_done(counter_ptr, programs, A_TMA: tl.constexpr):
    """Spin until `programs` programs have bumped the counter; with A_TMA, order the TMA loads (the async proxy)
    after that too."""
    while _load_acquire(counter_ptr) < programs:
        pass
    tl.debug_barrier()  # every thread's view is the acquiring loads' before any of them loads
    if A_TMA and _PROXY_FENCE:
        tl.inline_asm_elementwise("fence.proxy.async.global;\n\tmov.u32 $0, 0;", "=r,r", [programs], dtype=tl.int32,
                                  is_pure=False, pack=1)
