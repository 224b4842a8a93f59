"""A sweep killed with SIGKILL loses at most the cell in progress; the same command resumes without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from moe_lab.harness import KEY_FIELDS, load_results
from moe_lab.harness.sweep import read_rows

BACKENDS = "eager,grouped_mm,transformers:eager,transformers:grouped_mm"
SEQ_LENS = "8,16,32"
ROWS_BEFORE_KILL = 2
STARTUP_TIMEOUT_S = 120


def sweep_command(out) -> list[str]:
    return [sys.executable, "-m", "moe_lab.cli", "sweep", "--level", "layer", "--model", "tiny", "--backend", BACKENDS,
            "--batch-size", "1", "--seq-len", SEQ_LENS, "--warmup", "1", "--iters", "40", "--no-progress",
            "--out", str(out)]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_sigkill(tmp_path):
    out = tmp_path / "killed.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(sweep_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while len(read_rows(out)) < ROWS_BEFORE_KILL:
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no rows appeared in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = read_rows(out)
    total = len(BACKENDS.split(",")) * len(SEQ_LENS.split(","))
    assert ROWS_BEFORE_KILL <= len(before) < total, "the kill came too late to test a resume"

    done = subprocess.run(sweep_command(out), capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = read_rows(out)
    assert after[: len(before)] == before  # finished rows kept as they were
    df = load_results(out)
    assert len(df) == total and not df.duplicated(subset=list(KEY_FIELDS)).any()
    assert (df.status == "ok").all()
