"""What every row records about where it ran, and what `moe-lab env` prints."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from functools import cache
from importlib import metadata

import torch


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


@cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "(no CUDA device)"
    return cpu_name()


def timestamp() -> str:
    """Now, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def env_info(device: str | torch.device = "cpu") -> dict:
    """The environment columns of a row run on `device`."""
    return {
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "triton": version("triton") or version("pytorch-triton"),
        "python": platform.python_version(),
        "timestamp": timestamp(),
    }


def describe(measure: bool = True) -> str:
    """Versions, devices and (on a GPU, or on the CPU when asked) the measured roofline, as text."""
    lines = [
        f"python        {platform.python_version()} ({platform.platform()})",
        f"torch         {torch.__version__} (CUDA {torch.version.cuda or '-'})",
    ]
    for pkg in ("transformers", "triton", "numpy", "pandas", "moe-lab"):
        lines.append(f"{pkg:<13} {version(pkg) or '-'}")
    lines.append(f"cpu           {cpu_name()}, {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}        {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability "
                         f"{p.major}.{p.minor}, {p.multi_processor_count} SMs")
    else:
        lines.append("cuda          none visible to torch")
    from moe_lab.harness.grid import backend_names

    lines.append(f"backends      {', '.join(backend_names())}")
    if measure:
        from moe_lab.harness.roofline import measure_roofline

        targets = [("cuda", torch.bfloat16)] if torch.cuda.is_available() else [("cpu", torch.float32)]
        for dev, dtype in targets:
            roof = measure_roofline(dev, dtype)
            lines.append(f"roofline      {dev}: {roof.bandwidth_gbps:.1f} GB/s copy bandwidth, "
                         f"{roof.peak_tflops:.2f} TFLOP/s {roof.dtype} matmul ({roof.method})")
    return "\n".join(lines)
