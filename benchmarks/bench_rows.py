"""What every GPU benchmark script here does with its rows: stamp each with where it ran, then write them out.

`versions()` gives the columns that say where a row was measured (the GPU's name and the torch, triton and
transformers versions); `write_rows` writes the rows as one CSV under an output folder (made if missing).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch


def versions() -> dict[str, str]:
    """The columns every benchmark row carries: device (the GPU's name), torch, triton, transformers."""
    import transformers
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": transformers.__version__}


def write_rows(rows: list[dict], out_dir: str | Path, name: str) -> Path | None:
    """`rows` as the CSV out_dir/name (the folder made if missing), one column per key in the order they first
    appear; returns its path. No rows, no file (None)."""
    if not rows:
        return None
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
