"""benchmarks/dense_tma_gemm.py: the plain Triton TMA batched GEMM equals torch.bmm, under Triton's interpreter
on CPU (in a subprocess: the interpreter is chosen when triton is imported), on the GPU where there is one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parent.parent

# groups of 37 rows (not a multiple of 16: row blocks cross into the next group), 100 columns (a column tile
# crosses too), a reduction of 80 (the last K box runs past it and is zero-filled)
CHECK = """
import sys, torch
sys.path.insert(0, "benchmarks")
from dense_tma_gemm import dense_bmm
dev = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if dev == "cuda" else torch.float32
gen = torch.Generator().manual_seed(0)
E, M, K, N = 3, 37, 80, 100
a_EMK = torch.randn(E, M, K, generator=gen).to(dev, dtype)
w_EKN = torch.randn(E, N, K, generator=gen).to(dev, dtype).transpose(1, 2)
out_EMN = torch.full((E, M, N), float("nan"), device=dev, dtype=dtype)
dense_bmm(a_EMK, w_EKN, out_EMN, (16, 32, 32, 4, 2))
ref = torch.bmm(a_EMK.double(), w_EKN.double())
print(float((out_EMN.double() - ref).abs().max() / ref.abs().max()))
"""


def test_dense_bmm_equals_torch_bmm_on_ragged_edges():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tol = 1e-2 if torch.cuda.is_available() else 1e-4  # bf16 on the GPU, float32 in the interpreter
    assert float(proc.stdout.strip().splitlines()[-1]) < tol  # NaN (a tile never stored) fails too


def test_dense_bmm_refuses_weights_not_stored_k_contiguous():
    from dense_tma_gemm import dense_bmm

    a_EMK, w_EKN = torch.randn(2, 8, 16), torch.randn(2, 16, 32)  # stored (E, K, N): N contiguous
    with pytest.raises(ValueError, match="must be contiguous"):
        dense_bmm(a_EMK, w_EKN, torch.empty(2, 8, 32), (16, 32, 16, 4, 2))
