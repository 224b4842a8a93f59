"""Per-row-block ready counters (`"READY": 1`): down starts a row block once gate/up has written that block.

Without them down's first statement waits (PDL) for the whole of gate/up, so while gate/up's last wave runs,
the SMs it has left stream nothing (run 24's `SPLIT` answers that with two parts on two streams, at the cost
of a fork and a join on the host and a top-k sum that cannot start early). With them, on one stream:

- the alignment zeroes one int32 counter per row block, stored after the blocks' experts (`block_expert` then
  holds 2 * B values);
- each gate/up program bumps its block's counter after its tile's stores (release, GPU scope); a program
  whose block is past the last expert's bumps it too, so every counter ends at gate/up's column-tile count;
- down does not wait on gate/up: each program spins (acquire) until its block's counter is full, then reads.

It cannot hang. Gate/up lets PDL launch down only after its own wait on the kernel before it (so every
counter is zeroed before down can read one: `pdl_wait_then_launch`), and down is launched only once every
gate/up program has let it, that is, once all of gate/up's programs are on the GPU or done: a spinning down
program never keeps a gate/up program from running. Without PDL, down starts after gate/up has ended and
every counter is already full.
"""

from __future__ import annotations

import triton
import triton.language as tl

from moe_lab.kernels import INTERPRETED

_PROXY_FENCE = tl.constexpr(not INTERPRETED)  # the interpreter runs no PTX


@triton.jit
def signal_ready(counter_ptr):
    """After a program's stores: one more tile of this row block is written."""
    tl.debug_barrier()  # every thread's stores are issued before the one thread that bumps the count
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")


@triton.jit
def wait_ready(counter_ptr, tiles, A_TMA: tl.constexpr):
    """Spin until `tiles` gate/up tiles of this row block are written; with A_TMA, order the TMA loads (the
    async proxy) after that too."""
    while tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu") < tiles:
        pass
    tl.debug_barrier()  # the acquiring thread's view is every thread's before any of them loads
    if A_TMA and _PROXY_FENCE:
        tl.inline_asm_elementwise("fence.proxy.async.global;\n\tmov.u32 $0, 0;", "=r,r", [tiles], dtype=tl.int32,
                                  is_pure=False, pack=1)
