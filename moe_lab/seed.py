"""Reproducing the seed: our model-level rows beside the table published with transformers PR #42697.

The seed is one table (data/reference/pr42697_a100_qwen15moe_prefill.csv): Qwen1.5-MoE-A2.7B in
bfloat16 on an A100, one prefill forward of the whole model, batch {1, 4} x seq {16, 128}, backends
eager / batched_mm / grouped_mm, compile none / default / max-autotune-no-cudagraphs. From it the seed
draws four claims (`CLAIMS`); `verdicts` checks each of them against any source of rows, the
published table included (where every claim, as phrased here, holds: a check of the logic itself).

Everything works on a tidy frame (`seed_data`): one row per (source, batch_size, seq_len,
compile_mode, backend) with median_ms, peak_mem_mb and status. A source is the published table, the
H100 reference (transformers 5.17, no compile: data/reference/), or our results of one backend family
on one device: `<device> · transformers` for transformers' own backends (`transformers:eager` ...;
what the seed measured), `<device> · moe_lab` for moe_lab's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moe_lab.plots import TRANSFORMERS_PREFIX, device_label, is_ok, status_kind

REPO_ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_CSV = REPO_ROOT / "data" / "reference" / "pr42697_a100_qwen15moe_prefill.csv"
PUBLISHED_SOURCE = "A100 · published (PR #42697)"
# a measured baseline of the same cells on an H100, transformers 5.17's backends, no compile (../shared/reference)
H100_REFERENCE_CSV = REPO_ROOT / "data" / "reference" / "h100_transformers-5.17_qwen15moe_prefill_nocompile.csv"
H100_REFERENCE_SOURCE = "H100 · transformers 5.17, no compile (reference)"
REFERENCE_SOURCES = (PUBLISHED_SOURCE, H100_REFERENCE_SOURCE)

SEED_MODEL = "qwen1.5-moe-a2.7b"
SEED_DTYPE = "bfloat16"
SEED_LEVEL = "model"
SEED_BATCH_SIZES = (1, 4)
SEED_SEQ_LENS = (16, 128)
SEED_COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs")
SEED_BACKENDS = ("eager", "batched_mm", "grouped_mm")
# the published `torch_compile` column and our compile modes
TORCH_COMPILE = {"False": "none", "True": "default", "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs"}
COMPILE_LABEL = {mode: label for label, mode in TORCH_COMPILE.items()}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}

# Thresholds of the verdicts (named so a reader can see and change them)
SMALL_TOKENS = 16  # "small inputs": up to the seed's smallest cell, 1 x 16 tokens; "larger" is every other cell
SPIKE_MIN_RATIO = 1.10  # a memory spike: batched_mm's peak >= 1.10 x grouped_mm's in the largest cell
COMPILE_MIN_SPEEDUP = 1.10  # compile "speeds up" a backend: uncompiled / compiled median >= 1.10
SPIKE_COMPILE_MODE = "max-autotune-no-cudagraphs"  # the mode whose effect on batched_mm the seed shows

CLAIMS = {
    "batched_mm_small_compiled":
        f"batched_mm is the fastest backend on small inputs (<= {SMALL_TOKENS} tokens) when compiled",
    "grouped_mm_larger":
        f"grouped_mm is the fastest backend on larger inputs (> {SMALL_TOKENS} tokens), in every compile mode",
    "batched_mm_memory_spike":
        f"uncompiled batched_mm's peak memory spikes above grouped_mm's and grows with tokens "
        f"(>= {SPIKE_MIN_RATIO:.2f}x in the largest cell)",
    "compile_effect":
        f"compiling with {SPIKE_COMPILE_MODE} speeds batched_mm up in every cell (>= {COMPILE_MIN_SPEEDUP:.2f}x) "
        f"and removes its memory spike",
}
VERDICTS = ("holds", "partly", "does not hold", "no data")
TIDY_COLUMNS = ["source", "device_name", "family", "batch_size", "seq_len", "tokens", "compile_mode", "backend",
                "mean_ms", "median_ms", "p90_ms", "peak_mem_mb", "status"]


# ------------------------------------------------------------------------------------------- rows
def load_published(path: str | Path = PUBLISHED_CSV) -> pd.DataFrame:
    """The published A100 table as tidy rows (compile modes in our names)."""
    raw = pd.read_csv(path, dtype={"torch_compile": str})
    unknown = set(raw["torch_compile"]) - set(TORCH_COMPILE)
    if unknown:
        raise ValueError(f"{path}: unknown torch_compile value(s) {sorted(unknown)}; known: {list(TORCH_COMPILE)}")
    df = raw.assign(compile_mode=raw["torch_compile"].map(TORCH_COMPILE), source=PUBLISHED_SOURCE,
                    device_name="NVIDIA A100", family="transformers", status="ok",
                    tokens=raw["batch_size"] * raw["seq_len"])
    return df[TIDY_COLUMNS]


def load_h100_reference(path: str | Path = H100_REFERENCE_CSV) -> pd.DataFrame:
    """The H100 baseline (transformers 5.17, uncompiled prefill of the same cells) as tidy rows."""
    raw = pd.read_csv(path)
    df = raw.rename(columns={"bs": "batch_size", "seq": "seq_len", "impl": "backend", "peak_mb": "peak_mem_mb"})
    df = df.assign(source=H100_REFERENCE_SOURCE, device_name="NVIDIA H100", family="transformers",
                   compile_mode="none", status="ok", p90_ms=np.nan, tokens=df["batch_size"] * df["seq_len"])
    return df[TIDY_COLUMNS]


def _norm_dtype(value) -> str:
    value = str(value).removeprefix("torch.")
    return DTYPE_ALIASES.get(value, value)


def our_rows(results: pd.DataFrame, *, model: str = SEED_MODEL, dtype: str = SEED_DTYPE, level: str = SEED_LEVEL,
             batch_sizes=SEED_BATCH_SIZES, seq_lens=SEED_SEQ_LENS, compile_modes=SEED_COMPILE_MODES,
             backends=SEED_BACKENDS) -> pd.DataFrame:
    """Our rows of the seed's cells as tidy rows, one source per (device, backend family).

    Non-ok rows are kept (with their status) so a missing cell is explained; when a cell was measured
    more than once the latest row wins (an ok row over a failed one).
    """
    if results is None or len(results) == 0:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    df = results.copy()
    for col in ("batch_size", "seq_len", "mean_ms", "median_ms", "p90_ms", "peak_mem_mb"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["base"] = df["backend"].astype(str).str.removeprefix(TRANSFORMERS_PREFIX)
    df["family"] = np.where(df["backend"].astype(str).str.startswith(TRANSFORMERS_PREFIX), "transformers", "moe_lab")
    keep = (df["level"].astype(str) == level) & (df["model"].astype(str).str.lower() == model.lower()) \
        & (df["dtype"].map(_norm_dtype) == _norm_dtype(dtype)) & df["batch_size"].isin(batch_sizes) \
        & df["seq_len"].isin(seq_lens) & df["compile_mode"].astype(str).isin(compile_modes) & df["base"].isin(backends)
    df = df[keep]
    if df.empty:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    df = df.assign(_ok=is_ok(df), _order=df["timestamp"].astype(str) if "timestamp" in df else "")
    df = df.sort_values(["_ok", "_order"]).groupby(
        ["device", "device_name", "family", "batch_size", "seq_len", "compile_mode", "base"], dropna=False,
        as_index=False).last()
    df["device_name"] = [device_label(pd.DataFrame([r])) for r in df[["device", "device_name"]].to_dict("records")]
    df = df.assign(source=df["device_name"] + " · " + df["family"], backend=df["base"],
                   tokens=df["batch_size"] * df["seq_len"], status=df["status"].astype(str))
    return df[TIDY_COLUMNS].reset_index(drop=True)


def seed_data(results: pd.DataFrame | None = None, published: str | Path | None = PUBLISHED_CSV,
              reference: str | Path | None = H100_REFERENCE_CSV, **cells) -> pd.DataFrame:
    """The published table, the H100 reference (either left out when None) and our rows of the seed's
    cells, tidy. `cells` (model, dtype, level, ...) selects other cells of our results than the seed's."""
    parts = [load_published(published)] if published is not None else []
    if reference is not None:
        parts.append(load_h100_reference(reference))
    ours = our_rows(results, **cells)
    if len(ours):
        parts.append(ours)
    if not parts:
        return pd.DataFrame(columns=TIDY_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def sources(tidy: pd.DataFrame) -> list[str]:
    """The published source first, the H100 reference next, then ours in order."""
    names = list(dict.fromkeys(tidy["source"]))
    rank = {s: i for i, s in enumerate(REFERENCE_SOURCES)}
    return sorted(names, key=lambda s: (rank.get(s, len(rank)), s))


# ----------------------------------------------------------------------------------------- tables
def published_layout(tidy: pd.DataFrame, metrics=("median_ms", "peak_mem_mb")) -> pd.DataFrame:
    """The published table's layout (Batch Size, Seq Length, Torch Compile, Implementation) with one block
    of columns per source; a cell we could not measure shows its status instead of a number."""
    df = tidy.copy()
    for m in metrics:
        df[m] = df[m].astype(object).where(df["status"] == "ok", df["status"].map(status_kind))
    wide = df.pivot_table(index=["batch_size", "seq_len", "compile_mode", "backend"], columns="source",
                          values=list(metrics), aggfunc="first")
    wide = wide.swaplevel(0, 1, axis=1)
    wide = wide.reindex(columns=pd.MultiIndex.from_product([sources(tidy), list(metrics)]))
    order = [(b, s, c, k) for b in SEED_BATCH_SIZES for s in SEED_SEQ_LENS for k in SEED_BACKENDS
             for c in SEED_COMPILE_MODES]
    extra = [i for i in wide.index if i not in set(order)]
    wide = wide.reindex([i for i in order if i in set(wide.index)] + sorted(extra))
    wide.index = wide.index.set_levels(
        [COMPILE_LABEL.get(c, c) for c in wide.index.levels[2]], level=2)
    wide.index.names = ["Batch Size", "Seq Length", "Torch Compile", "Implementation"]
    wide.columns.names = ["source", None]
    return wide


def _ok_cells(tidy: pd.DataFrame, value: str = "median_ms") -> pd.DataFrame:
    """(source, batch, seq, tokens, compile_mode) x backend table of `value` over ok rows."""
    ok = tidy[tidy["status"] == "ok"]
    return ok.pivot_table(index=["source", "batch_size", "seq_len", "tokens", "compile_mode"], columns="backend",
                          values=value, aggfunc="first")


def cell_ratios(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per cell and source: latency ratios between backends (> 1: the right-hand one is faster),
    the fastest backend, and batched_mm's peak memory over grouped_mm's."""
    lat, mem = _ok_cells(tidy, "median_ms"), _ok_cells(tidy, "peak_mem_mb")
    out = pd.DataFrame(index=lat.index)
    for a, b in (("eager", "batched_mm"), ("eager", "grouped_mm"), ("batched_mm", "grouped_mm")):
        if a in lat and b in lat:
            out[f"{a} / {b}"] = lat[a] / lat[b]
    present = [b for b in SEED_BACKENDS if b in lat]
    out["fastest"] = lat[present].idxmin(axis=1, skipna=True) if present and lat[present].notna().any().any() \
        else np.nan
    if {"batched_mm", "grouped_mm"} <= set(mem.columns):
        out["peak batched_mm / grouped_mm"] = mem["batched_mm"] / mem["grouped_mm"]
    order = {s: i for i, s in enumerate(sources(tidy))}
    out = out.reset_index()
    out["compile_mode"] = pd.Categorical(out["compile_mode"], [m for m in SEED_COMPILE_MODES
                                                                if m in set(out["compile_mode"])] +
                                         sorted(set(out["compile_mode"]) - set(SEED_COMPILE_MODES)))
    out = out.sort_values(["source", "batch_size", "seq_len", "compile_mode"], key=lambda c: c.map(order)
                          if c.name == "source" else c)
    out["compile_mode"] = out["compile_mode"].astype(str)
    return out.set_index(["source", "batch_size", "seq_len", "compile_mode"]).drop(columns="tokens")


def compile_speedups(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per source, backend and compile mode: uncompiled median / compiled median, geometric mean over
    the cells measured in both, with the min and max."""
    ok = tidy[tidy["status"] == "ok"]
    base = ok[ok["compile_mode"] == "none"][["source", "backend", "batch_size", "seq_len", "median_ms"]]
    comp = ok[ok["compile_mode"] != "none"].merge(base, on=["source", "backend", "batch_size", "seq_len"],
                                                 suffixes=("", "_none"))
    comp["speedup"] = comp["median_ms_none"] / comp["median_ms"]
    if comp.empty:
        return pd.DataFrame(columns=["source", "backend", "compile_mode", "geomean", "min", "max", "cells"])
    out = comp.groupby(["source", "backend", "compile_mode"], as_index=False).agg(
        geomean=("speedup", lambda s: float(np.exp(np.log(s).mean()))), min=("speedup", "min"),
        max=("speedup", "max"), cells=("speedup", "size"))
    return out


# --------------------------------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class Verdict:
    claim: str
    source: str
    verdict: str  # one of VERDICTS
    cells: int  # cells the verdict rests on
    evidence: str


def _cell_name(r) -> str:
    return f"{int(r.batch_size)}x{int(r.seq_len)}"


def _of(count: int, total: int) -> str:
    if total == 0:
        return "no data"
    return "holds" if count == total else ("does not hold" if count == 0 else "partly")


def _fastest_claim(lat: pd.DataFrame, winner: str, small: bool, compiled_only: bool) -> tuple[str, int, str]:
    rows = lat.reset_index()
    rows = rows[(rows["tokens"] <= SMALL_TOKENS) if small else (rows["tokens"] > SMALL_TOKENS)]
    if compiled_only:
        rows = rows[rows["compile_mode"] != "none"]
    mode_rank = {m: i for i, m in enumerate(SEED_COMPILE_MODES)}
    rows = rows.assign(_m=rows["compile_mode"].map(lambda m: mode_rank.get(m, len(mode_rank))))
    rows = rows.sort_values(["tokens", "batch_size", "_m"]).drop(columns="_m")
    present = [b for b in SEED_BACKENDS if b in rows]
    checked, wins, notes = 0, 0, []
    for r in rows.itertuples(index=False):
        values = {b: getattr(r, b) for b in present if pd.notna(getattr(r, b))}
        if winner not in values or len(values) < 2:
            continue
        checked += 1
        others = {b: v for b, v in values.items() if b != winner}
        runner, runner_ms = min(others.items(), key=lambda kv: kv[1])
        if values[winner] < runner_ms:
            wins += 1
            notes.append(f"{_cell_name(r)} {r.compile_mode}: {winner} {values[winner]:.3g} ms, "
                         f"{runner_ms / values[winner]:.2f}x faster than {runner}")
        else:
            fastest = min(values, key=values.get)
            notes.append(f"{_cell_name(r)} {r.compile_mode}: {fastest} fastest ({values[fastest]:.3g} ms), "
                         f"{winner} {values[winner] / values[fastest]:.2f}x slower")
    scope = f"{'compiled ' if compiled_only else ''}cell of {'<=' if small else '>'} {SMALL_TOKENS} tokens"
    return _of(wins, checked), checked, "; ".join(notes) or f"no {scope} with {winner} and another backend measured"


def _spike(tidy_src: pd.DataFrame, mode: str) -> tuple[list, str]:
    """[(tokens, cell, ratio, extra_mb)] of batched_mm's peak over grouped_mm's in `mode`, by tokens."""
    mem = tidy_src[(tidy_src["status"] == "ok") & (tidy_src["compile_mode"] == mode)]
    wide = mem.pivot_table(index=["tokens", "batch_size", "seq_len"], columns="backend", values="peak_mem_mb",
                           aggfunc="first")
    if not {"batched_mm", "grouped_mm"} <= set(wide.columns):
        return [], "no data"
    wide = wide.dropna(subset=["batched_mm", "grouped_mm"]).sort_index()
    points = [(t, f"{b}x{s}", r.batched_mm / r.grouped_mm, r.batched_mm - r.grouped_mm)
              for (t, b, s), r in wide.iterrows()]
    text = ", ".join(f"{c} {ratio:.2f}x ({extra / 1024:+.1f} GB)" for _, c, ratio, extra in points)
    return points, text


def _memory_claim(tidy_src: pd.DataFrame) -> tuple[str, int, str]:
    points, text = _spike(tidy_src, "none")
    if not points:
        return "no data", 0, "no uncompiled cell with batched_mm and grouped_mm peak memory"
    ratios = [p[2] for p in points]
    spikes = ratios[-1] >= SPIKE_MIN_RATIO
    grows = all(b >= a - 1e-9 for a, b in zip(ratios, ratios[1:]))
    verdict = "holds" if spikes and grows else ("partly" if spikes else "does not hold")
    detail = "" if grows else "; the ratio does not grow monotonically with tokens"
    return verdict, len(points), f"batched_mm / grouped_mm peak, uncompiled: {text}{detail}"


def _compile_claim(tidy_src: pd.DataFrame) -> tuple[str, int, str]:
    ok = tidy_src[(tidy_src["status"] == "ok") & (tidy_src["backend"] == "batched_mm")]
    wide = ok.pivot_table(index=["tokens", "batch_size", "seq_len"], columns="compile_mode", values="median_ms",
                          aggfunc="first")
    if not {"none", SPIKE_COMPILE_MODE} <= set(wide.columns):
        return "no data", 0, f"batched_mm not measured both uncompiled and with {SPIKE_COMPILE_MODE}"
    wide = wide.dropna(subset=["none", SPIKE_COMPILE_MODE]).sort_index()
    speedups = [(f"{b}x{s}", r["none"] / r[SPIKE_COMPILE_MODE]) for (t, b, s), r in wide.iterrows()]
    faster = sum(sp >= COMPILE_MIN_SPEEDUP for _, sp in speedups)
    points, spike_text = _spike(tidy_src, SPIKE_COMPILE_MODE)
    removed = bool(points) and points[-1][2] < SPIKE_MIN_RATIO
    parts = [faster == len(speedups) and len(speedups) > 0, removed]
    verdict = "holds" if all(parts) else ("partly" if any(parts) or faster else "does not hold")
    evidence = (f"batched_mm uncompiled / {SPIKE_COMPILE_MODE}: "
                + ", ".join(f"{c} {sp:.2f}x" for c, sp in speedups)
                + f"; its peak over grouped_mm's with {SPIKE_COMPILE_MODE}: {spike_text or 'no data'}")
    return verdict, len(speedups), evidence


def verdicts(tidy: pd.DataFrame) -> pd.DataFrame:
    """For each claim of the seed (CLAIMS) and each source: holds / partly / does not hold / no data, the
    number of cells it rests on, and the numbers behind it."""
    lat = _ok_cells(tidy, "median_ms")
    rows = []
    for source in sources(tidy):
        lat_src = lat.xs(source, level="source") if source in lat.index.get_level_values("source") else \
            pd.DataFrame(columns=list(SEED_BACKENDS), index=pd.MultiIndex.from_tuples(
                [], names=["batch_size", "seq_len", "tokens", "compile_mode"]))
        tidy_src = tidy[tidy["source"] == source]
        results = {
            "batched_mm_small_compiled": _fastest_claim(lat_src, "batched_mm", small=True, compiled_only=True),
            "grouped_mm_larger": _fastest_claim(lat_src, "grouped_mm", small=False, compiled_only=False),
            "batched_mm_memory_spike": _memory_claim(tidy_src),
            "compile_effect": _compile_claim(tidy_src),
        }
        for claim, (verdict, cells, evidence) in results.items():
            rows.append(Verdict(claim, source, verdict, cells, evidence).__dict__)
    out = pd.DataFrame(rows, columns=["claim", "source", "verdict", "cells", "evidence"])
    out.insert(1, "statement", out["claim"].map(CLAIMS))
    return out


def verdict_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """claim x source grid of verdicts (what `verdicts` returns, at a glance)."""
    grid = table.pivot(index="claim", columns="source", values="verdict")
    return grid.reindex(index=[c for c in CLAIMS if c in grid.index],
                        columns=[s for s in sources(table) if s in grid.columns])


def missing_cells(tidy: pd.DataFrame) -> pd.DataFrame:
    """Seed cells each of our sources lacks or could not measure (status other than ok)."""
    rows = []
    for source in sources(tidy):
        if source in REFERENCE_SOURCES:
            continue
        src = tidy[tidy["source"] == source]
        have = {(r.batch_size, r.seq_len, r.compile_mode, r.backend): r.status for r in src.itertuples()}
        for b in SEED_BATCH_SIZES:
            for s in SEED_SEQ_LENS:
                for c in SEED_COMPILE_MODES:
                    for k in SEED_BACKENDS:
                        status = have.get((b, s, c, k), "not run")
                        if status != "ok":
                            rows.append(dict(source=source, batch_size=b, seq_len=s, compile_mode=c, backend=k,
                                             status=status))
    return pd.DataFrame(rows, columns=["source", "batch_size", "seq_len", "compile_mode", "backend", "status"])


def report(table: pd.DataFrame) -> str:
    """The verdicts as plain text: each claim, then each source's verdict with the numbers behind it."""
    lines = []
    for claim, rows in table.groupby("claim", sort=False):
        lines.append(f"{claim}: {CLAIMS.get(claim, '')}")
        for r in rows.itertuples(index=False):
            lines.append(f"  {r.source}: {r.verdict.upper()} ({r.cells} cells)")
            lines += [f"      {part}" for part in str(r.evidence).split("; ")]
        lines.append("")
    return "\n".join(lines)


def source_counts(tidy: pd.DataFrame) -> pd.DataFrame:
    """Rows and ok rows per source."""
    return tidy.assign(ok=tidy["status"] == "ok").groupby("source", sort=False).agg(
        rows=("status", "size"), ok=("ok", "sum"))
