"""An L2 prefetch: ask for the 128-byte lines at some addresses to be pulled into L2, nothing waiting on them.

PTX `prefetch.global.L2`, one per address, its dummy result discarded (the asm is marked impure, so the
compiler keeps it). It reads no value, so it is safe on any in-bounds address, stale or not: a prefetch of
the wrong line costs bandwidth, never a wrong result. Compiled CUDA only: callers guard it with a constexpr
that is off under Triton's interpreter.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def prefetch_l2(ptrs):
    tl.inline_asm_elementwise("prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [ptrs.to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)
