"""Shared test set-up: tolerances, the backend x device parametrization, seeded inputs.

Every test that takes a `backend` argument runs once per entry of `moe_lab.BACKENDS`, so a backend
added later is tested without touching the tests. A backend that runs only on some device types says
so with a `device_types` attribute on its function, e.g. `triton_fused_experts.device_types = ("cuda",)`;
without it a backend is taken to run everywhere. A test that also takes a `device` argument runs on every
device type that the backend supports and this machine has (CPU always, CUDA where present); a backend
with none of them here is one skipped test with the reason, never silently dropped.

Two more optional attributes narrow what is asked of a backend, each case skipped with its reason:
`dtypes` (the dtypes it computes in; tests with a `dtype` parameter outside them are skipped) and
`differentiable = False` (forward only; tests marked `needs_grad` are skipped).

Legend: T tokens, H hidden, I expert intermediate, E experts, K top-k.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from moe_lab import BACKENDS

# Every tensor here is tiny: one thread per op. Two OpenMP threads spinning on 2 shared cores made the
# suite 3-5x slower under load, for no coverage.
torch.set_num_threads(1)

# Relative error ||out - ref|| / ||ref|| allowed against the float64 reference, per dtype.
FP32_RTOL = 1e-4
FP16_RTOL = 5e-3
BF16_RTOL = 3e-2
RTOL = {torch.float32: FP32_RTOL, torch.float16: FP16_RTOL, torch.bfloat16: BF16_RTOL}

def available_device_types() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_device_types(name: str) -> tuple[str, ...] | None:
    """The device types backend `name` declares it runs on (its function's `device_types`), None for any."""
    declared = getattr(BACKENDS[name], "device_types", None)
    return None if declared is None else tuple(declared)


def backend_devices(name: str) -> list[str]:
    """The device types of this machine that backend `name` runs on."""
    declared = backend_device_types(name)
    return [d for d in available_device_types() if declared is None or d in declared]


def _skip_param(name: str, *values):
    reason = f"backend {name!r} runs on {', '.join(backend_device_types(name))} only; none here"
    return pytest.param(*values, id="-".join(map(str, values)), marks=pytest.mark.skip(reason=reason))


def pytest_generate_tests(metafunc):
    """Parametrize `backend` (and `backend, device` together) over every registered backend."""
    if "backend" not in metafunc.fixturenames:
        return
    if "device" in metafunc.fixturenames:
        params = []
        for name in BACKENDS:
            devices = backend_devices(name)
            params += [pytest.param(name, d, id=f"{name}-{d}") for d in devices] or [_skip_param(name, name, "cpu")]
        metafunc.parametrize(("backend", "device"), params)
    else:  # CPU-only tests: compile, transformers integration
        metafunc.parametrize("backend", [pytest.param(n, id=n) if "cpu" in backend_devices(n) else _skip_param(n, n)
                                         for n in BACKENDS])


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_grad: the test differentiates through the backend")


def pytest_collection_modifyitems(config, items):
    """Skip the cases a backend declares it does not handle (`dtypes`, `differentiable`), saying why."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") not in BACKENDS:
            continue
        name, fn = params["backend"], BACKENDS[params["backend"]]
        dtypes = getattr(fn, "dtypes", None)
        if "dtype" in params and dtypes is not None and params["dtype"] not in dtypes:
            item.add_marker(pytest.mark.skip(reason=f"backend {name!r} computes in {dtypes}, not {params['dtype']}"))
        if item.get_closest_marker("needs_grad") and not getattr(fn, "differentiable", True):
            item.add_marker(pytest.mark.skip(reason=f"backend {name!r} is forward only (differentiable = False)"))


@pytest.fixture
def rtol():
    """The named tolerances by dtype, for tests that take `dtype` as a parameter."""
    return RTOL


@pytest.fixture
def seed(request) -> int:
    """A seed of its own for every test case (fresh inputs per case), stable from run to run."""
    return zlib.crc32(request.node.nodeid.encode())


@pytest.fixture
def gen(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

