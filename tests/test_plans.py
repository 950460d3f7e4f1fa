"""The flat index's batch plans, each forced in a child process.

Which plan runs depends on the CPU (fused AVX-512, fused AVX2, or OpenBLAS
sgemm + select): the main run exercises only the best one, so the oracle
tests are re-run here with the environment variables that lower the SIMD
level or force the sgemm path.
"""
import os
import subprocess
import sys

import pytest

from conftest import ISA_ORDER, isa_levels

CASES = [pytest.param({"IMGSEARCH_FLAT_BLAS": "1"}, id="IMGSEARCH_FLAT_BLAS=1")] + [
    pytest.param({"IMGSEARCH_SIMD": p.values[0]}, id=f"IMGSEARCH_SIMD={p.values[0]}", marks=p.marks)
    for p in isa_levels(ISA_ORDER)]


@pytest.mark.parametrize("env", CASES)
def test_flat_oracle_tests_pass_under_every_plan(env):
    here = os.path.dirname(os.path.abspath(__file__))
    full_env = dict(os.environ, **env)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.join(here, "test_flat.py"),
         "-k", "brute_force or filters or exact or padding"],
        cwd=os.path.dirname(here), env=full_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
