"""Figures from sweep results: every function takes a results DataFrame and returns a Figure.

The DataFrame has the harness's columns (`moe_lab.harness.COLUMNS`). Only rows whose `status` is `ok`
are drawn; every other row (skipped, oom, unsupported, fallback:...) is left out of the curves and
named in a footnote of the figure, so a missing point is never silent. `excluded_rows` gives the same
list as a table.

- `latency_vs_tokens`: median latency per backend, log-log, one panel per compile mode, a band up to p90;
- `memory_vs_tokens`: peak memory per backend, one panel per compile mode;
- `speedup_heatmap`: speedup over uncompiled eager, one panel per compile mode, backends x cells;
- `roofline_fraction`: floor_ms / median_ms per backend (1 = at the roofline floor).

`write_figures` splits results by (device, level, model, dtype, routing), draws every figure of each
group and writes PNG + SVG named after the group, e.g.
`h100-80gb-hbm3_layer_qwen1.5-moe-a2.7b_bfloat16_uniform_latency.png`.
"""

from __future__ import annotations

import colorsys
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns

COMPILE_ORDER = ("none", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
BACKEND_ORDER = ("eager", "batched_mm", "grouped_mm", "triton_fused", "auto")
TRANSFORMERS_PREFIX = "transformers:"
GROUP_KEYS = ("device", "level", "model", "dtype", "routing")
KINDS = ("latency", "memory", "speedup", "roofline")
# x axis of the curves per level: decode is per-token latency, so its natural size is the batch
X_BY_LEVEL = {"decode": "batch_size"}
X_LABELS = {"tokens": "tokens (batch x seq)", "batch_size": "batch size", "seq_len": "sequence length"}
FOOTNOTE_MAX = 6  # excluded rows named in a figure's footnote before "and N more"


# ---------------------------------------------------------------------------------------------- data
def is_ok(df: pd.DataFrame) -> pd.Series:
    """True for rows that measured something (`status == "ok"`)."""
    return df["status"].astype(str).str.strip().eq("ok")


def status_kind(status: str) -> str:
    """'skipped: needs 140 GiB' -> 'skipped'; 'fallback:batched_mm' -> 'fallback'."""
    return re.split(r"[:\s]", str(status).strip(), maxsplit=1)[0] or "?"


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col in ("batch_size", "seq_len", "tokens", "mean_ms", "median_ms", "p90_ms", "peak_mem_mb",
                "extra_mem_mb", "compile_s", "tflops", "gbps", "floor_ms"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    if "tokens" not in df and {"batch_size", "seq_len"} <= set(df.columns):
        df["tokens"] = df["batch_size"] * df["seq_len"]
    for col in ("backend", "compile_mode", "status"):
        if col in df:
            df[col] = df[col].astype(str)
    return df


def excluded_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows that are not drawn (status other than ok), with what identifies them and why."""
    df = _numeric(df)
    cols = [c for c in ("level", "model", "backend", "compile_mode", "batch_size", "seq_len", "tokens",
                        "routing", "status", "error") if c in df]
    return df.loc[~is_ok(df), cols].reset_index(drop=True)


def summary_table(df: pd.DataFrame, value: str = "median_ms") -> pd.DataFrame:
    """Median latency (or `value`) per cell, one column per backend; non-ok cells show their status."""
    df = _numeric(df)
    index = [c for c in ("level", "model", "compile_mode", "batch_size", "seq_len", "tokens") if c in df]
    shown = df[value].map(lambda v: f"{v:.4g}").where(is_ok(df), df["status"].map(status_kind))
    table = df.assign(_shown=shown).pivot_table(index=index, columns="backend", values="_shown", aggfunc="first")
    table = table.reindex(columns=sorted(table.columns, key=_backend_sort_key))
    table.columns.name = f"{value} by backend"
    return table


def _backend_sort_key(name: str) -> tuple[int, int, str]:
    family = 1 if name.startswith(TRANSFORMERS_PREFIX) else 0
    base = name.removeprefix(TRANSFORMERS_PREFIX)
    rank = BACKEND_ORDER.index(base) if base in BACKEND_ORDER else len(BACKEND_ORDER)
    return (family, rank, base)


def backend_order(names: Iterable[str]) -> list[str]:
    """moe_lab's backends in a fixed order, then transformers' baselines in the same order."""
    return sorted(set(names), key=_backend_sort_key)


def compile_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [m for m in COMPILE_ORDER if m in names] + sorted(names - set(COMPILE_ORDER))


def backend_palette(names: Iterable[str]) -> dict[str, tuple]:
    """One colour per backend, stable across figures; transformers:X is a lighter shade of X's colour."""
    base_colors = sns.color_palette("tab10", 10)
    bases = list(BACKEND_ORDER) + sorted({n.removeprefix(TRANSFORMERS_PREFIX) for n in names} - set(BACKEND_ORDER))
    palette = {}
    for name in names:
        base = name.removeprefix(TRANSFORMERS_PREFIX)
        color = base_colors[bases.index(base) % len(base_colors)]
        if name.startswith(TRANSFORMERS_PREFIX):
            h, l, s = colorsys.rgb_to_hls(*color)
            color = colorsys.hls_to_rgb(h, min(1.0, l + 0.5 * (1 - l)), s * 0.8)
        palette[name] = tuple(color)
    return palette


def family(backend: str) -> str:
    return "transformers" if backend.startswith(TRANSFORMERS_PREFIX) else "moe_lab"


def x_column(df: pd.DataFrame) -> str:
    """'batch_size' for decode results, 'tokens' otherwise."""
    levels = set(df["level"].astype(str)) if "level" in df else set()
    xs = {X_BY_LEVEL.get(level, "tokens") for level in levels} or {"tokens"}
    return xs.pop() if len(xs) == 1 else "tokens"


# ------------------------------------------------------------------------------------------ naming
def slug(text: str) -> str:
    """Lower-case, file-name-safe: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    text = re.sub(r"[^a-z0-9.+]+", "-", str(text).lower()).strip("-")
    return text or "unknown"


def device_label(df: pd.DataFrame) -> str:
    """The device a group of rows ran on, for titles and file names: the GPU's name, or 'cpu'."""
    names = []
    for device, name in df[["device", "device_name"]].drop_duplicates().itertuples(index=False) \
            if "device_name" in df else ((d, None) for d in df["device"].drop_duplicates()):
        device = str(device)
        if device.startswith("cuda") and isinstance(name, str) and name and name != "nan":
            names.append(slug(name).removeprefix("nvidia-"))
        else:
            names.append(slug(device.split(":")[0]))
    names = sorted(set(names))
    return "+".join(names) if names else "unknown"


def figure_stem(df: pd.DataFrame, kind: str) -> str:
    """File name (no suffix) of figure `kind` drawn from `df`: device_level_model_dtype_routing_kind."""
    parts = [device_label(df)]
    for key in GROUP_KEYS[1:]:
        values = sorted({str(v) for v in df[key].dropna()}) if key in df else []
        parts.append(slug("+".join(values)) if values else "na")
    return "_".join(parts + [kind])


def _title(df: pd.DataFrame) -> str:
    def one(col):
        values = sorted({str(v) for v in df[col].dropna()}) if col in df else []
        return "/".join(values) if values else "?"

    device = one("device_name") if "device_name" in df and df["device_name"].notna().any() else one("device")
    return f"{one('model')} · {one('level')} · {one('dtype')} · routing: {one('routing')} · {device}"


def _footnote(fig: plt.Figure, df: pd.DataFrame, extra: str = "") -> None:
    """Name the rows that are not drawn at the bottom of `fig`."""
    bad = excluded_rows(df)
    lines = []
    if len(bad):
        x = x_column(df)
        items = []  # one item per (backend, compile mode, status), listing its sizes
        for (backend, mode, status), rows in bad.groupby(["backend", "compile_mode", "status"], sort=False):
            sizes = ", ".join(f"{v:g}" for v in sorted(pd.to_numeric(rows[x], errors="coerce").dropna().unique()))
            items.append(f"{backend} {mode} at {x} {sizes or '?'}: {status}")
        shown = items[:FOOTNOTE_MAX] + ([f"and {len(items) - FOOTNOTE_MAX} more"] if len(items) > FOOTNOTE_MAX else [])
        lines.append(f"not drawn ({len(bad)} rows without status ok): " + "; ".join(shown))
    if extra:
        lines.append(extra)
    if lines:
        width = max(40, int(fig.get_figwidth() * 15))  # characters per line at fontsize 7
        text = "\n".join(textwrap.fill(line, width) for line in lines)
        # below the axes (y < 0): bbox_inches="tight" and the inline backend both grow the figure to fit
        fig.text(0.01, -0.02, text, fontsize=7, va="top", ha="left", color="0.3")


def _empty_figure(df: pd.DataFrame, message: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10)
    fig.suptitle(_title(df), fontsize=9)
    _footnote(fig, df)
    return fig


def _aggregate(ok: pd.DataFrame, x: str, values: list[str]) -> pd.DataFrame:
    """One point per (compile mode, backend, x): the median over rows that share it (e.g. 1x128 and 4x32)."""
    keys = ["compile_mode", "backend", x]
    agg = ok.groupby(keys, as_index=False)[values].median()
    agg["family"] = agg["backend"].map(family)
    return agg.sort_values(keys)


# --------------------------------------------------------------------------------------- the curves
def _log_ticks(ax, xs: list) -> None:
    """Log x axis; ticks at the measured sizes when there are few of them, plain numbers either way."""
    ax.set_xscale("log")
    if 0 < len(xs) <= 10:
        ax.xaxis.set_major_locator(mticker.FixedLocator(xs))
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    ax.tick_params(axis="x", labelsize=8)


def _curves(df: pd.DataFrame, y: str, ylabel: str, *, band: str | None = None, logy: bool | None = True,
            ylim: tuple | None = None, height: float = 3.2, extra_note: str = "") -> plt.Figure:
    """seaborn relplot: hue=backend, style=family (moe_lab solid, transformers dashed), col=compile_mode."""
    df = _numeric(df)
    x = x_column(df)
    ok = df[is_ok(df)].dropna(subset=[x, y])
    ok = ok[(ok[y] > 0) | (not logy)] if logy else ok
    if ok.empty:
        return _empty_figure(df, f"no rows with status ok and a value of {y}")
    agg = _aggregate(ok, x, [y] + ([band] if band else []))
    backends, modes = backend_order(agg["backend"]), compile_order(agg["compile_mode"])
    palette = backend_palette(backends)
    families = [f for f in ("moe_lab", "transformers") if f in set(agg["family"])]
    grid = sns.relplot(
        data=agg, x=x, y=y, hue="backend", hue_order=backends, palette=palette,
        style="family", style_order=families, dashes={"moe_lab": "", "transformers": (4, 2)},
        markers={"moe_lab": "o", "transformers": "X"}, col="compile_mode", col_order=modes,
        col_wrap=min(len(modes), 3), kind="line", height=height, aspect=1.15, errorbar=None,
        facet_kws=dict(sharex=True, sharey=True),
    )
    for mode, ax in grid.axes_dict.items():
        if band:
            for backend, rows in agg[agg["compile_mode"] == mode].groupby("backend"):
                rows = rows.dropna(subset=[band])
                ax.fill_between(rows[x], rows[y], rows[band], color=palette[backend], alpha=0.18, lw=0)
        _log_ticks(ax, sorted(agg[x].unique()))
        if logy is None:  # log only where the values span more than a decade
            values = agg[y][agg[y] > 0]
            use_log = len(values) and values.max() / values.min() > 10
            ax.set_yscale("log" if use_log else "linear")
        elif logy:
            ax.set_yscale("log")
        if ylim:
            ax.set_ylim(*ylim)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(f"compile: {mode}", fontsize=10)
    grid.set_axis_labels(X_LABELS.get(x, x), ylabel)
    grid.figure.suptitle(_title(df), fontsize=10, y=1.02)
    _footnote(grid.figure, df, extra_note)
    return grid.figure


def latency_vs_tokens(df: pd.DataFrame) -> plt.Figure:
    """Median latency vs tokens per backend, log-log, one panel per compile mode, shaded up to p90."""
    return _curves(df, "median_ms", "median latency (ms); band to p90", band="p90_ms")


def memory_vs_tokens(df: pd.DataFrame, y: str = "peak_mem_mb") -> plt.Figure:
    """Peak memory (or `extra_mem_mb`) vs tokens per backend, one panel per compile mode."""
    label = {"peak_mem_mb": "peak memory (MB)", "extra_mem_mb": "memory above the inputs (MB)"}.get(y, y)
    return _curves(df, y, label, logy=None)


def roofline_fraction(df: pd.DataFrame) -> plt.Figure:
    """floor_ms / median_ms per backend: 1 means the cell runs at its roofline floor."""
    df = _numeric(df)
    df["roofline_frac"] = df["floor_ms"] / df["median_ms"] if "floor_ms" in df else np.nan
    has_floor = df["roofline_frac"].notna() & is_ok(df)
    if not has_floor.any():
        return _empty_figure(df, "no roofline floor recorded (floor_ms is empty)")
    top = max(1.5, float(df.loc[has_floor, "roofline_frac"].max()) * 1.5)
    fig = _curves(df, "roofline_frac", "fraction of roofline floor (log)", logy=True, ylim=(None, top),
                  extra_note="fraction = floor_ms / median_ms (1 = at the floor); floor = max(bytes of the experts "
                             "hit / bandwidth, flops / matmul peak)")
    for ax in fig.axes:
        if ax.get_title().startswith("compile: "):
            ax.axhline(1.0, color="0.4", lw=0.8, ls=":", gid="floor")
    return fig


def baseline_backend(backends: Iterable[str]) -> str | None:
    backends = set(backends)
    return next((b for b in ("eager", TRANSFORMERS_PREFIX + "eager") if b in backends), None)


def speedup_table(df: pd.DataFrame, baseline: str | None = None, baseline_compile_mode: str = "none") -> pd.DataFrame:
    """Tidy speedups: baseline median / backend median per (compile mode, backend, cell).

    The baseline is `eager` (else `transformers:eager`) compiled with `baseline_compile_mode`, so a
    compiled panel shows what compiling and the backend gain together. Cells with a non-ok row or
    without a baseline get NaN and keep the row's status in `status`.
    """
    df = _numeric(df)
    baseline = baseline or baseline_backend(df.loc[is_ok(df), "backend"])
    cell = ["batch_size", "seq_len", "tokens"]
    rows = df.groupby(["compile_mode", "backend"] + cell, as_index=False).agg(
        median_ms=("median_ms", "median"), status=("status", "first"))
    base = rows[(rows["backend"] == baseline) & (rows["compile_mode"] == baseline_compile_mode)
                & (rows["status"] == "ok")]
    base = base[cell + ["median_ms"]].rename(columns={"median_ms": "baseline_ms"})
    out = rows.merge(base, on=cell, how="left")
    out["speedup"] = (out["baseline_ms"] / out["median_ms"]).where(out["status"] == "ok")
    keep = ~((out["backend"] == baseline) & (out["compile_mode"] == baseline_compile_mode))
    out = out[keep].assign(baseline=f"{baseline} ({baseline_compile_mode})")
    return out.reset_index(drop=True)


def _cell_label(row, by_tokens: bool) -> str:
    return f"{int(row.tokens)}" if by_tokens else f"{int(row.batch_size)}x{int(row.seq_len)}"


def speedup_heatmap(df: pd.DataFrame, baseline: str | None = None, baseline_compile_mode: str = "none") -> plt.Figure:
    """Speedup over uncompiled eager: one panel per compile mode, a row per backend, a column per cell.

    Blue is faster than the baseline, red slower (the colour scale is log2 of the speedup, centred on 1);
    a cell without an ok row shows its status instead of a number.
    """
    table = speedup_table(df, baseline, baseline_compile_mode)
    if table.empty or not table["speedup"].notna().any():
        return _empty_figure(_numeric(df), "no speedup to draw (no ok baseline rows: eager, compile none)")
    by_tokens = table.groupby("tokens")[["batch_size", "seq_len"]].nunique().max().max() <= 1 and \
        table["batch_size"].nunique() <= 1
    base_label = table["baseline"].iloc[0]
    base_backend = base_label.split(" (")[0]
    table["cell"] = [_cell_label(r, by_tokens) for r in table.itertuples(index=False)]
    cells = list(dict.fromkeys(table.sort_values(["tokens", "batch_size"])["cell"]))
    modes = compile_order(table["compile_mode"])
    backends = backend_order(table["backend"])
    log2 = np.log2(table["speedup"].where(table["speedup"] > 0))
    lim = max(1.0, float(np.nanmax(np.abs(log2))))
    norm = mcolors.TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    fig, axes = plt.subplots(len(modes), 1, squeeze=False, sharex=True,
                             figsize=(2.5 + 0.62 * len(cells), 0.3 + len(modes) * (0.6 + 0.36 * len(backends))))
    for ax, mode in zip(axes[:, 0], modes):
        sub = table[table["compile_mode"] == mode]
        values = sub.pivot_table(index="backend", columns="cell", values="speedup", aggfunc="median", dropna=False)
        values = values.reindex(index=backends, columns=cells)
        status = sub.pivot_table(index="backend", columns="cell", values="status", aggfunc="first")
        status = status.reindex(index=backends, columns=cells)
        ax.imshow(np.log2(values.to_numpy(dtype=float)), cmap="RdBu", norm=norm, aspect="auto")
        for i, backend in enumerate(backends):
            for j, cell in enumerate(cells):
                v, s = values.iat[i, j], status.iat[i, j]
                if np.isfinite(v):
                    text = f"{v:.2g}x"
                elif pd.isna(s):
                    text = "baseline" if (backend == base_backend and mode == baseline_compile_mode) else ""
                else:
                    text = "no base" if s == "ok" else status_kind(s)
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if np.isfinite(v) and abs(np.log2(v)) > 0.6 * lim else "black")
        ax.set_xticks(range(len(cells)), cells, rotation=45 if len(cells) > 12 else 0, fontsize=8)
        ax.set_yticks(range(len(backends)), backends, fontsize=8)
        ax.set_title(f"compile: {mode}", fontsize=9)
    axes[-1, 0].set_xlabel("tokens" if by_tokens else "batch x seq")
    fig.suptitle(f"speedup over {base_label} (baseline median / backend median)\n{_title(_numeric(df))}", fontsize=9)
    fig.tight_layout()
    _footnote(fig, df)
    return fig


FIGURES = {
    "latency": latency_vs_tokens,
    "memory": memory_vs_tokens,
    "speedup": speedup_heatmap,
    "roofline": roofline_fraction,
}


# ------------------------------------------------------------------------------------------ writing
def save_figure(fig: plt.Figure, out_dir: str | Path, stem: str, formats: Iterable[str] = ("png", "svg"),
                dpi: int = 150, close: bool = True) -> list[Path]:
    """Write `fig` as out_dir/stem.png and .svg (PNG for the README, SVG beside it); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        # svg.hashsalt and no date keep the SVG identical from run to run for the same data
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        with plt.rc_context({"svg.hashsalt": "moe_lab"}):
            fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    if close:
        plt.close(fig)
    return paths


def groups(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Split results into the groups a figure set is drawn from: one per (device, level, model, dtype, routing)."""
    df = _numeric(df)
    df["_device"] = [device_label(pd.DataFrame([r])) for r in df[["device", "device_name"]].to_dict("records")] \
        if "device_name" in df else df["device"].astype(str)
    keys = ["_device"] + [k for k in GROUP_KEYS[1:] if k in df]
    return [g.drop(columns="_device") for _, g in df.groupby(keys, sort=True, dropna=False)]


def write_figures(results: pd.DataFrame, out_dir: str | Path, kinds: Iterable[str] = KINDS,
                  formats: Iterable[str] = ("png", "svg")) -> pd.DataFrame:
    """Every figure of every group of `results`, written to `out_dir`; one row per figure written."""
    unknown = set(kinds) - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figure kind(s) {sorted(unknown)}; valid: {', '.join(FIGURES)}")
    written = []
    for group in groups(results):
        for kind in kinds:
            stem = figure_stem(group, kind)
            paths = save_figure(FIGURES[kind](group), out_dir, stem, formats)
            written.append(dict(figure=stem, kind=kind, rows=len(group), ok_rows=int(is_ok(group).sum()),
                                files=", ".join(p.name for p in paths)))
    return pd.DataFrame(written, columns=["figure", "kind", "rows", "ok_rows", "files"])
