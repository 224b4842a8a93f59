"""The timing harness and sweep engine: one cell -> one row; a grid of cells -> a resumable CSV.

    from moe_lab.harness import SweepGrid, run_sweep, load_results
    grid = SweepGrid(level=["layer"], model=["tiny"], backend=["all"], batch_size=[1, 4], seq_len=[16, 128])
    df = run_sweep(grid, "runs/tiny.csv")          # appends + flushes each row; rerun resumes

Modules, one idea each: `grid` (Cell, SweepGrid, names and validation), `timing` (warm-up and timed
calls), `memory` (peak memory, CPU memory estimates), `roofline` (flops/bytes of the experts hit,
measured bandwidth and matmul peak, floor), `levels` (layer/model/decode/train workloads), `compile`
(compile modes, transformers' compatibility table), `env` (versions, devices), `sweep` (rows, CSV,
resume, loading).
"""

from moe_lab.harness.compile import compat
from moe_lab.harness.env import describe as describe_environment
from moe_lab.harness.env import env_info
from moe_lab.harness.grid import (COMPILE_MODES, CUDAGRAPH_MODES, DTYPES, HF_BACKENDS, HF_PREFIX, KEY_FIELDS, LEVELS,
                                  Cell, SweepGrid, backend_names)
from moe_lab.harness.levels import Workload, build_workload, clear_caches
from moe_lab.harness.memory import PeakMemory, estimate_cell_bytes
from moe_lab.harness.roofline import Roofline, experts_cost, floor_ms, measure_roofline
from moe_lab.harness.sweep import (COLUMN_DOCS, COLUMNS, append_row, columns_markdown, load_results, run_cell,
                                   run_sweep, summarize)
from moe_lab.harness.timing import Timing, benchmark, time_calls

__all__ = [
    "COLUMNS", "COLUMN_DOCS", "COMPILE_MODES", "CUDAGRAPH_MODES", "DTYPES", "HF_BACKENDS", "HF_PREFIX", "KEY_FIELDS",
    "LEVELS", "Cell", "PeakMemory", "Roofline", "SweepGrid", "Timing", "Workload", "append_row", "backend_names",
    "benchmark", "build_workload", "clear_caches", "columns_markdown", "compat", "describe_environment",
    "env_info", "estimate_cell_bytes", "experts_cost", "floor_ms", "load_results", "measure_roofline", "run_cell",
    "run_sweep", "summarize", "time_calls",
]
