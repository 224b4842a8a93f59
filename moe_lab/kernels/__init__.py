"""Triton kernels for the experts computation (imported lazily: moe_lab works without triton).

`INTERPRETED` records whether the kernels were built for Triton's CPU interpreter: `triton.jit`
reads `TRITON_INTERPRET` once, when a kernel module is imported, so that is what counts, not the
variable's value later.
"""

from __future__ import annotations

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _patch_interpreter_for_numpy2() -> None:
    """Triton <= 3.6's interpreter turns a scalar into an index with `int(array_of_shape_(1,))`, an error
    since numpy 2.4 (`range(start, S)` with a runtime S fails). Index through `.item()` instead."""
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_moe_lab_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._moe_lab_patched = True
    interpreter._patch_lang_tensor = patched


if INTERPRETED:
    _patch_interpreter_for_numpy2()
