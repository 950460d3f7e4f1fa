"""The flat index's batch plans and the HNSW walk at every SIMD level, each
forced in a child process.

Which kernels run depends on the CPU (fused AVX-512, fused AVX2, or OpenBLAS
sgemm + select; the bounded distances of the HNSW walk per level): the main
run exercises only the best level, so the oracle tests are re-run here with
the environment variables that lower the SIMD level or force the sgemm path.
"""
import pytest

from conftest import ISA_ORDER, isa_levels, run_tests_in_child

CASES = [pytest.param({"IMGSEARCH_FLAT_BLAS": "1"}, id="IMGSEARCH_FLAT_BLAS=1")] + [
    pytest.param({"IMGSEARCH_SIMD": p.values[0]}, id=f"IMGSEARCH_SIMD={p.values[0]}", marks=p.marks)
    for p in isa_levels(ISA_ORDER)]


@pytest.mark.parametrize("env", CASES)
def test_flat_oracle_tests_pass_under_every_plan(env):
    run_tests_in_child("test_flat.py", "brute_force or filters or exact or padding", env)


@pytest.mark.parametrize("level", isa_levels(ISA_ORDER))
def test_hnsw_recall_tests_pass_at_every_level(level):
    run_tests_in_child("test_hnsw.py", "recall_against_flat or filters_match or compressed_storage or padding",
                       {"IMGSEARCH_SIMD": level})
