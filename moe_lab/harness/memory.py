"""Peak memory during the timed calls, and an estimate of a cell's memory before it runs.

CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (absolute, as in the seed's
table), and the extra above `memory_allocated` just before the calls.
CPU: the process's peak resident memory, which sees every allocation torch makes (tracemalloc sees
only Python's). On Linux the kernel's high-water mark (VmHWM) is reset through /proc/self/clear_refs
and read back after the calls; elsewhere a psutil thread samples the resident size every millisecond.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import torch

MB = 2**20
GiB = 2**30
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _proc_status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_bytes() -> int:
    """The resident memory of this process now."""
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def available_bytes() -> int:
    """Memory the system can still give this process (MemAvailable)."""
    import psutil

    return psutil.virtual_memory().available


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float = 1e-3):
        super().__init__(daemon=True)
        import psutil

        self._proc, self._interval, self.peak = psutil.Process(), interval_s, 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop_event.wait(self._interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self._proc.memory_info().rss)


class PeakMemory:
    """`with PeakMemory(device) as mem: ...`, then `mem.peak_mb`, `mem.extra_mb`, `mem.method`."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        self.baseline_mb = self.peak_mb = self.extra_mb = float("nan")
        self.method = ""
        self._sampler: _RssSampler | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / MB
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda_max_memory_allocated"
        else:
            self.baseline_mb = rss_bytes() / MB
            if _reset_rss_peak():
                self.method = "rss_vmhwm"
            else:
                self._sampler = _RssSampler()
                self._sampler.start()
                self.method = "rss_sampled"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / MB
        elif self._sampler is not None:
            self.peak_mb = self._sampler.stop() / MB
        else:
            self.peak_mb = _proc_status_kb("VmHWM") * 1024 / MB
        self.extra_mb = max(self.peak_mb - self.baseline_mb, 0.0)


# --- estimates, so a CPU cell that would not fit is skipped instead of meeting the OOM killer ---------


def experts_weight_elements(shape) -> int:
    """Elements of one experts layer's weights (and biases): E * (H*N + I*H [+ N + H])."""
    H, I, E = shape.hidden, shape.intermediate, shape.experts
    N = 2 * I if shape.layout.has_gate else I
    per_expert = H * N + I * H + ((N + H) if shape.layout.has_bias else 0)
    return E * per_expert


def experts_workspace_bytes(shape, tokens: int, backend: str, elem: int) -> int:
    """The transient memory of one experts call beyond weights and inputs.

    batched_mm gathers a full weight matrix per (token, expert) pair: S*(H*N + I*H) elements with
    S = T*K (the Qwen1.5 shape at 2048 tokens in bf16: ~140 GB). Other backends hold activations of
    a few (S, N)-sized tensors.
    """
    H, I, K = shape.hidden, shape.intermediate, shape.top_k
    N = 2 * I if shape.layout.has_gate else I
    S = tokens * K
    activations = S * (2 * H + N + I) * max(elem, 4) * 2  # sorted/gathered inputs, projections, fp32 outputs
    if "batched_mm" in backend:
        return S * (H * N + I * H) * elem + activations
    return activations


def _model_param_count(model: str, num_layers: int | None) -> int:
    from moe_lab.harness.levels import count_model_params

    return count_model_params(model, num_layers)


def estimate_cell_bytes(cell) -> int:
    """A generous estimate of the memory a cell needs while it runs (weights, workspace, activations)."""
    from moe_lab.shapes import get_shape

    shape = get_shape(cell.model)
    elem = cell.torch_dtype.itemsize
    weights = experts_weight_elements(shape) * elem
    workspace = experts_workspace_bytes(shape, cell.tokens, cell.backend, elem)
    if cell.level == "decode":  # the prompt is prefilled with grouped_mm (see levels.build_decode)
        prompt = cell.batch_size * cell.seq_len
        workspace = max(workspace, experts_workspace_bytes(shape, prompt, "transformers:grouped_mm", elem))
    io = cell.tokens * shape.hidden * elem * 4
    if cell.level == "layer":
        return weights + workspace + io
    if cell.level == "train":
        # weight gradients, saved activations, and batched_mm's gathered weights again in the backward
        return 2 * weights + 3 * workspace + 3 * io
    cfg = shape.config
    params = _model_param_count(cell.model, cell.num_layers) * elem
    vocab = cfg.get("vocab_size", 152064)
    heads = cfg.get("num_attention_heads", 16)
    B, S = cell.batch_size, cell.seq_len
    logits = B * S * vocab * 4 if cell.level == "model" else B * vocab * 4 * 2
    attention = B * heads * S * S * elem * 2 if cell.level == "model" else 0
    hidden = B * S * max(shape.hidden, cfg.get("intermediate_size", 0)) * elem * 8
    kv_cache = 0
    if cell.level == "decode":
        kv_heads = cfg.get("num_key_value_heads", heads)
        head_dim = cfg.get("head_dim", shape.hidden // heads)
        positions = S + cell.warmup + cell.iters + 8
        kv_cache = 2 * (cell.num_layers or shape.layers) * B * kv_heads * head_dim * positions * elem
    return params + workspace + logits + attention + hidden + kv_cache


def cpu_skip_reason(cell, budget_bytes: int | None = None) -> str | None:
    """`skipped: needs X GiB, Y GiB available` when a CPU cell's estimate exceeds the budget, else None."""
    need = estimate_cell_bytes(cell)
    avail = available_bytes() if budget_bytes is None else budget_bytes
    if need > avail:
        return f"skipped: needs {need / GiB:.1f} GiB, {avail / GiB:.1f} GiB available"
    return None
