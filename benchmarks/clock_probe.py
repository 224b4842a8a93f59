"""Each timed call of `triton_fused` beside the SM clock at that moment: does the software power cap slow a point?

    PYTHONPATH=.:benchmarks python benchmarks/clock_probe.py --models qwen3-30b-a3b --tokens 16384 --out $OUT

`nvidia-smi` samples the SM clock, power and clock-event reasons every `--sample-ms` in the background while
each (model, T) is called `--calls` times on the bench's inputs (`triton_gpu.inputs`), each call timed alone by
CUDA events after an L2 flush (`moe_lab.tune.sample_ms`) and stamped with the wall time at its end. Each call
is then matched to the last sample before its end. Writes `nvidia_smi.csv` (raw), `calls.csv` (a row per call:
ms, the floor's fraction, the matched sample) and `summary.csv` (`summarize`: a point's first calls against its
calls under sustained load). `--summarize DIR` writes DIR's summary.csv again from its calls.csv, with no GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
from bench_rows import versions, write_rows
from triton_gpu import inputs

from moe_lab.backends.triton_fused import triton_fused_experts
from moe_lab.harness.roofline import experts_cost, floor_ms, measure_roofline
from moe_lab.shapes import build_hf_experts, get_shape
from moe_lab.tune import median_ms, sample_ms

SMI_FIELDS = "timestamp,clocks.current.sm,power.draw,clocks_event_reasons.active"
SW_POWER_CAP = 0x4  # clocks_event_reasons bit: the software power cap
STAMP = ["device", "torch", "triton", "transformers", "bandwidth_gbps", "peak_tflops"]  # where the calls ran
FIRST_CALLS = 8  # a point's first calls, summarized as the GPU coming from rest
SETTLED_CALL = 100  # calls from this one on, summarized as sustained load


def smi_samples(path: Path) -> pd.DataFrame:
    """The background sampler's rows: wall time (s since the epoch, as `time.time()`), SM MHz, W, reasons."""
    df = pd.read_csv(path, header=None, names=["stamp", "sm_mhz", "power_w", "reasons"], skipinitialspace=True)
    df["wall_s"] = [datetime.strptime(s, "%Y/%m/%d %H:%M:%S.%f").timestamp() for s in df["stamp"]]
    df["capped"] = [int(str(r), 16) & SW_POWER_CAP != 0 for r in df["reasons"]]
    return df.drop(columns="stamp").sort_values("wall_s")


def time_calls(model: str, T: int, calls: int, roof) -> list[dict]:
    """`calls` calls of triton_fused on the bench's inputs for (model, T), each timed alone and stamped."""
    shape = get_shape(model)
    ex = build_hf_experts(model, device="cuda", dtype=torch.bfloat16)
    x, ids, w = inputs(shape, T)
    fl = floor_ms(experts_cost(shape, ids, 2), roof)
    dev = torch.device("cuda")
    with torch.no_grad():
        sample_ms(lambda: triton_fused_experts(ex, x, ids, w), dev, reps=3, warmup=3)
        rows = []
        for i in range(calls):
            ms = sample_ms(lambda: triton_fused_experts(ex, x, ids, w), dev, reps=1, warmup=0)[0]
            rows.append(dict(model=model, T=T, call=i, end_s=time.time(), ms=round(ms, 5), floor_ms=round(fl, 5),
                             frac=round(fl / ms, 4)))
    return rows


def summarize(calls: pd.DataFrame, first: int = FIRST_CALLS, settled: int = SETTLED_CALL) -> pd.DataFrame:
    """Per point: median ms and fraction of the floor over its first `first` calls (the GPU coming from rest, as
    in the bench's rounds of a few calls) and over the calls from `settled` on (under sustained load), with the
    sampled SM clock, power and share of power-capped samples over the latter. The sampler's readings lag the
    GPU by tens of milliseconds, so they describe the stretch, not a single call."""
    out = []
    for (model, T), g in calls.groupby(["model", "T"], sort=False):
        fl = g["floor_ms"].iloc[0]
        head, tail = g[g["call"] < first], g[g["call"] >= settled]
        out.append(dict(model=model, T=T, floor_ms=fl, calls=len(g),
                        first_ms=round(head["ms"].median(), 5), first_frac=round(fl / head["ms"].median(), 4),
                        sustained_ms=round(tail["ms"].median(), 5), sustained_frac=round(fl / tail["ms"].median(), 4),
                        sustained_sm_mhz=tail["sm_mhz"].median(), sustained_power_w=tail["power_w"].median(),
                        sustained_capped_share=round(tail["capped"].mean(), 3)))
    return pd.DataFrame(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="qwen3-30b-a3b")
    p.add_argument("--tokens", default="16384")
    p.add_argument("--calls", type=int, default=600)
    p.add_argument("--sample-ms", type=int, default=20)
    p.add_argument("--out", default=os.environ.get("OUT", "out"))
    p.add_argument("--summarize", metavar="DIR", help="only write DIR/summary.csv again from DIR/calls.csv")
    args = p.parse_args(argv)
    if args.summarize:
        write_summary(pd.read_csv(Path(args.summarize) / "calls.csv"), Path(args.summarize))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda")
    roof = measure_roofline("cuda", torch.bfloat16, timer=lambda fn: median_ms(fn, dev, reps=10))
    smi_path = out / "nvidia_smi.csv"
    with open(smi_path, "w") as f:
        smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits",
                                f"-lms={args.sample_ms}"], stdout=f)
        try:
            time.sleep(0.5)
            rows = [r for m in args.models.split(",") for t in args.tokens.split(",")
                    for r in time_calls(m, int(t), args.calls, roof)]
            time.sleep(0.2)
        finally:
            smi.terminate()
            smi.wait()
    samples = smi_samples(smi_path)
    calls = pd.merge_asof(pd.DataFrame(rows).sort_values("end_s"), samples, left_on="end_s", right_on="wall_s")
    calls["sample_age_ms"] = ((calls["end_s"] - calls["wall_s"]) * 1e3).round(1)
    stamp = {**versions(), "bandwidth_gbps": round(roof.bandwidth_gbps), "peak_tflops": round(roof.peak_tflops)}
    write_rows([{**r, **stamp} for r in calls.drop(columns="wall_s").to_dict("records")], out, "calls.csv")
    write_summary(pd.read_csv(out / "calls.csv"), out)
    return 0


def write_summary(calls: pd.DataFrame, out: Path) -> None:
    """`summarize` of a calls.csv, with its device, versions and roofline columns, as out/summary.csv (printed)."""
    stamp = calls[STAMP].iloc[0].to_dict()
    summary = summarize(calls)
    write_rows([{**r, **stamp} for r in summary.to_dict("records")], out, "summary.csv")
    print(summary.to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(main())
