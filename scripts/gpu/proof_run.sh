#!/usr/bin/env bash
# One device call that gathers the GPU proofs that need no vLLM: the Triton kernels' CUDA tests,
# the transformers batch-invariance proof, and the CUTLASS FP8 build + tests (+ bench if time).
# Usage on the GPU machine, from the repo root:  bash scripts/gpu/proof_run.sh [--with-fp8-bench]
source scripts/gpu/env.sh
LOG=$OUT/proof.log
{
  echo "== bi-triton-ascend (CUDA)"; date
  timeout 150 python3 -m pytest packages/bi-triton-ascend/tests -q -p no:cacheprovider -x -rs \
    --ignore=packages/bi-triton-ascend/tests/attention 2>&1 | tail -15
  echo "== transformers Qwen3 under batch_invariant()"; date
  timeout 120 python3 tests-integration/gpu/transformers_bi.py --out "$OUT/transformers_bi.json" 2>&1 | tail -8
  echo "== bi-cutlass-fp8 build + GPU tests"; date
  if [ "${1:-}" = "--with-fp8-bench" ]; then
    timeout 420 python3 packages/bi-cutlass-fp8/bench/gpu_run.py 2>&1 | tail -25
  else
    timeout 290 python3 packages/bi-cutlass-fp8/bench/gpu_run.py --no-bench 2>&1 | tail -15
  fi
  date
} 2>&1 | tee "$LOG"
