"""A few Nsight Compute metrics per kernel, from the raw pages `benchmarks/ncu_call.py`'s runs exported.

    ncu -i rep.ncu-rep --csv --page raw > rep_raw.csv          (on the GPU machine)
    python benchmarks/ncu_summary.py DIR/*_raw.csv --out DIR/ncu_summary.csv

One row per kernel of each file (the file's stem names the point): device time, SM clock, the tensor
pipe's and L2's and DRAM's share of their peak over the kernel's elapsed cycles, DRAM bytes read and
written, the bytes L2 served to the SMs (TMA, cp.async and plain loads) and how many of those sectors
missed in L2, and the launch (registers, grid, dynamic shared memory). The units ncu writes in the file's
first row are converted to us, GHz, MB and KB.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

METRICS = {  # column -> ncu metric
    "us": "gpu__time_duration.sum",
    "sm_ghz": "sm__cycles_elapsed.avg.per_second",
    "tensor_pct": "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed",
    "l2_pct": "lts__throughput.avg.pct_of_peak_sustained_elapsed",
    "dram_pct": "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
    "dram_read_mb": "dram__bytes_read.sum",
    "dram_write_mb": "dram__bytes_write.sum",
    "l2_to_sm_mb": "l1tex__m_xbar2l1tex_read_bytes.sum",
    "l2_read_miss_sectors": "lts__t_sectors_srcunit_tex_op_read_lookup_miss.sum",
    "registers": "launch__registers_per_thread",
    "grid": "launch__grid_size",
    "smem_kb": "launch__shared_mem_per_block_dynamic",
}
_BYTES_MB = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "Tbyte": 1e6}
TO_UNIT = {  # column -> {unit ncu writes: factor to the column's unit}
    "us": {"ns": 1e-3, "us": 1.0, "ms": 1e3},
    "sm_ghz": {"hz": 1e-9, "Khz": 1e-6, "Mhz": 1e-3, "Ghz": 1.0},
    "dram_read_mb": _BYTES_MB, "dram_write_mb": _BYTES_MB, "l2_to_sm_mb": _BYTES_MB,
    "smem_kb": {unit: factor * 1e3 for unit, factor in _BYTES_MB.items()},
}


def summarize(path: Path) -> pd.DataFrame:
    """The kernels of one raw page, one row each, in launch order."""
    raw = pd.read_csv(path, low_memory=False)
    units, rows = raw.iloc[0], raw.iloc[1:]
    missing = [m for m in METRICS.values() if m not in raw.columns]
    if missing:
        raise ValueError(f"{path}: not an ncu raw page with these metrics (missing {missing[:3]}...)")
    out = pd.DataFrame({"point": path.stem.removesuffix("_raw"), "kernel": rows["Kernel Name"].str.slice(0, 60),
                        "device": rows["device__attribute_display_name"]})
    for col, metric in METRICS.items():
        values = rows[metric].map(lambda v: float(str(v).replace(",", "")))
        if col in TO_UNIT:
            unit = str(units[metric]).split("/")[0]  # "Kbyte/block": Kbyte
            if unit not in TO_UNIT[col]:
                raise ValueError(f"{path}: {metric} in {units[metric]!r}, which this script does not convert")
            values = values * TO_UNIT[col][unit]
        out[col] = values.round(3)
    return out.reset_index(drop=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("raw", nargs="+", type=Path, help="ncu --page raw CSVs")
    p.add_argument("--out", type=Path, help="write the table here (CSV); else print it")
    args = p.parse_args(argv)
    table = pd.concat([summarize(path) for path in args.raw], ignore_index=True)
    if args.out:
        table.to_csv(args.out, index=False)
    else:
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
