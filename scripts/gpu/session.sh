#!/usr/bin/env bash
# The GPU work of one device session, in phases that each fit one device call (< 10 minutes).
# Run from the repository root on the lent machine, after `source scripts/gpu/env.sh`:
#
#   bash scripts/gpu/session.sh kernels   # no vLLM needed: FP8 bench, Triton CUDA tests, model bench
#   bash scripts/gpu/session.sh e2e       # vLLM staged: needle e2e, 0.6B and 8B shapes, all cases
#   bash scripts/gpu/session.sh bench     # vLLM staged: serving benchmark, 0.6B and 8B shapes
#   bash scripts/gpu/session.sh tp        # vLLM staged, 2 GPUs: tensor-parallel runs
#   bash scripts/gpu/session.sh check     # no vLLM: Triton and ir-dispatch CUDA tests, host cost
#   bash scripts/gpu/session.sh tune      # no vLLM: every FP8 config timed
#   bash scripts/gpu/session.sh long      # vLLM staged: attention backend smoke + #12 baseline
#   bash scripts/gpu/session.sh tpbench   # vLLM staged, 2 GPUs: TP = 2 serving, default + vllm-bi
#   bash scripts/gpu/session.sh tpbench2  # the same, plugin without and with TP-invariant mode
#   bash scripts/gpu/session.sh serve     # vLLM staged: vllm serve vs offline + attention smoke
#   bash scripts/gpu/session.sh profile   # vLLM staged: kernel time per mode (torch.profiler)
#   bash scripts/gpu/session.sh gemm      # vLLM staged, carry .upstream: #4 GEMM table, all columns
#   bash scripts/gpu/session.sh tpall     # vLLM staged, 2 GPUs: TP = 2 serving, all modes, one JSON
#   bash scripts/gpu/session.sh rldiag    # vLLM staged: RL layer-by-layer diff + prefill with big graphs
#   bash scripts/gpu/session.sh rl        # vLLM staged: RL check (eager, compiled), trainer bench
#   bash scripts/gpu/session.sh graphs    # vLLM staged: the plugin's CUDA-graph sizes, all loads
#   bash scripts/gpu/session.sh multi JOB...  # the jobs of scripts/gpu/jobs.sh, spread over the GPUs
#
# Jobs are spread over the GPUs the machine has (one or two). A device call brings back at most
# 8 files from $OUT, so each phase leaves its JSON results there and packs every log into one
# tarball, <phase>-logs.tgz.
set -u
PHASE=${1:?usage: session.sh kernels|e2e|bench|tp|attn|check|tune|long|tpbench|tpbench2|tpall|rldiag|rl|graphs|serve|profile|gemm|multi JOB...}
WORK=/tmp/work/$PHASE
mkdir -p "$WORK" "$OUT"
NGPU=$(nvidia-smi -L | wc -l)
GPU_B=$((NGPU > 1 ? 1 : 0))  # the second GPU, or the first again on a one-GPU machine
PAR=$((NGPU > 1 ? 6 : 3))    # engines side by side per shape
echo "== phase $PHASE on $NGPU GPU(s), $(date -u +%H:%M:%S)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader

# gpu_job GPU SECONDS NAME CMD...: run CMD on one GPU in the background, output to $WORK/NAME.log
gpu_job() {
  local gpu=$1 secs=$2 name=$3
  shift 3
  (CUDA_VISIBLE_DEVICES=$gpu timeout "$secs" "$@" >"$WORK/$name.log" 2>&1
   echo "== $name exit $? at $(date -u +%H:%M:%S)" >>"$WORK/$name.log") &
}

# after_job: wait for the jobs, show each log's tail, pack the logs, list $OUT.
after_jobs() {
  wait
  cp "$WORK"/*.json "$OUT"/ 2>/dev/null
  for f in "$WORK"/*.log; do
    echo "---------------- $(basename "$f")"
    tail -n "${TAIL:-25}" "$f"
  done
  tar czf "$OUT/$PHASE-logs.tgz" -C "$WORK" . 2>/dev/null
  ls -la "$OUT"
}

case $PHASE in
kernels)
  # GPU A: the CUTLASS FP8 kernel's JIT build and benchmark (#5), then the model-level bench (#4).
  gpu_job 0 420 fp8 bash -c "python3 packages/bi-cutlass-fp8/bench/bench_fp8.py \
    ; python3 benchmarks/model_decoder.py --shapes 0.6b --out $OUT/model_decoder_0.6b.json \
    ; python3 benchmarks/model_decoder.py --shapes 8b --compile eager --out $OUT/model_decoder_8b.json"
  [ "$NGPU" -lt 2 ] && wait  # one card: keep the timed runs alone on it
  # GPU B: every bi-triton-ascend CUDA test, attention included (#3), after the dot-precision
  # change; ir-dispatch's CUDA tests after the contiguous-output fix; the attention benchmark (#12).
  gpu_job "$GPU_B" 420 triton_tests bash -c "python3 -m pytest packages/bi-triton-ascend/tests -q \
    -p no:cacheprovider -rs --junitxml=$OUT/bi_triton_cuda.junit.xml; \
    python3 -m pytest packages/ir-dispatch/tests/test_cuda.py -q -p no:cacheprovider -rs \
    --junitxml=$OUT/ir_dispatch_cuda.junit.xml; \
    OUT=$WORK python3 packages/bi-triton-ascend/bench/bench_attention.py && cp $WORK/bench_attention.json $OUT/"
  after_jobs
  ;;
e2e)
  # Needle alone vs in batches, three modes, four cases (#10): one shape per GPU.
  source scripts/gpu/jobs.sh  # E2E8_ENGINE: the 8B engines' setting, shared with job_e2e8
  gpu_job 0 560 e2e_06b python3 tests-integration/gpu/e2e_vllm_gpu.py --shape 0.6b \
    --parallel "$PAR" --gpus 0 --out "$OUT/e2e_vllm_gpu_0.6b.json" --log-dir "$WORK/06b"
  gpu_job "$GPU_B" 560 e2e_8b python3 tests-integration/gpu/e2e_vllm_gpu.py --shape 8b \
    --parallel "$PAR" --gpus "$GPU_B" --out "$OUT/e2e_vllm_gpu_8b.json" --log-dir "$WORK/8b" \
    --engine "$E2E8_ENGINE"
  after_jobs
  ;;
bench)
  # Serving throughput and latency, default vs vllm-bi vs plugin (#10); one shape per GPU, the
  # modes one after another on it. Results and logs in $WORK, the JSON copied to $OUT at the end.
  gpu_job 0 560 bench_06b python3 benchmarks/vllm_serving.py --shape 0.6b --timeout 250 \
    --model-dir /tmp/models --out "$WORK/vllm_serving_0.6b.json"
  [ "$NGPU" -lt 2 ] && wait  # one card: the shapes one after the other
  gpu_job "$GPU_B" 560 bench_8b python3 benchmarks/vllm_serving.py --shape 8b --timeout 250 \
    --model-dir /tmp/models --out "$WORK/vllm_serving_8b.json"
  after_jobs
  ;;
tp)
  if [ "$NGPU" -lt 2 ]; then echo "phase tp needs 2 GPUs, this machine has $NGPU"; exit 2; fi
  (timeout 510 python3 tests-integration/gpu/e2e_vllm_tp.py --out "$OUT/e2e_vllm_tp.json" \
    --log-dir "$WORK" --shapes "${TP_SHAPES:-0.6b}" --deadline "${TP_DEADLINE:-440}" \
    >"$WORK/tp.log" 2>&1; echo "== tp exit $?" >>"$WORK/tp.log")
  TAIL=60 after_jobs
  ;;
check)
  # The Triton CUDA suite, ir-dispatch's CUDA tests and the host cost per call: job `triton`.
  exec bash "$0" multi triton
  ;;
tune)
  gpu_job 0 240 fp8_configs python3 packages/bi-cutlass-fp8/bench/bench_fp8.py --all-configs
  after_jobs
  ;;
long)
  # GPU A: the attention backend in vLLM (#12), then the plugin on the long loads; GPU B: the
  # baseline of #12 (default vLLM and vLLM's own mode), 8B shape, 1k/8k/32k contexts.
  gpu_job 0 560 long_plugin bash -c "python3 tests-integration/gpu/attn_backend_smoke.py \
    --out $OUT/attn_backend_smoke.json; python3 benchmarks/vllm_serving.py --shape 8b \
    --modes plugin --loads long-single,long-batch8 --timeout 250 --model-dir /tmp/models \
    --out $WORK/vllm_long_plugin.json"
  gpu_job "$GPU_B" 560 long_base python3 benchmarks/vllm_serving.py --shape 8b \
    --modes default,vllm-bi --loads long-single,long-batch8 --timeout 260 \
    --model-dir /tmp/models --out "$WORK/vllm_long_base.json"
  after_jobs
  ;;
tpbench|tpbench2)
  if [ "$NGPU" -lt 2 ]; then echo "phase $PHASE needs 2 GPUs, this machine has $NGPU"; exit 2; fi
  # Serving benchmark at TP = 2 (#11), one engine at a time on both GPUs, in two calls:
  # tpbench = default and vLLM's own mode; tpbench2 = the plugin without and with
  # VLLM_BI_TP_INVARIANT=1 (the cost of TP-invariant mode). Fold the two JSONs with --merge.
  BENCH="python3 benchmarks/vllm_serving.py --shape 0.6b --tp 2 --timeout 250 --model-dir /tmp/models"
  if [ "$PHASE" = tpbench ]; then
    (timeout 560 $BENCH --modes default,vllm-bi --out "$WORK/vllm_serving_tp2.json" \
      >"$WORK/tpbench.log" 2>&1; echo "== tpbench exit $?" >>"$WORK/tpbench.log")
  else
    (timeout 280 $BENCH --modes plugin --out "$WORK/vllm_serving_tp2_plugin.json" \
      >"$WORK/tpbench2.log" 2>&1; echo "== plugin exit $?" >>"$WORK/tpbench2.log"
     VLLM_BI_TP_INVARIANT=1 timeout 280 $BENCH --modes plugin --variant tp-invariant \
      --out "$WORK/vllm_serving_tp2_plugin.json" >>"$WORK/tpbench2.log" 2>&1
     echo "== plugin+tp-invariant exit $?" >>"$WORK/tpbench2.log")
  fi
  TAIL=40 after_jobs
  ;;
tpall)
  if [ "$NGPU" -lt 2 ]; then echo "phase tpall needs 2 GPUs, this machine has $NGPU"; exit 2; fi
  # The TP = 2 serving benchmark (#11) in one call where it fits: one engine at a time on both
  # GPUs, the modes of TP_MODES in order (default: all four), each given the time left before
  # TP_BUDGET seconds. Results accumulate in one JSON (kept on the machine between calls), so a
  # second call with TP_MODES set to what is missing completes it.
  BENCH="python3 benchmarks/vllm_serving.py --shape 0.6b --tp 2 --model-dir /tmp/models"
  RESULT=/tmp/work/vllm_serving_tp2.json
  DEADLINE=$(($(date +%s) + ${TP_BUDGET:-540}))
  for m in ${TP_MODES:-default tp-invariant plugin vllm-bi}; do
    left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 90 ]; then echo "== $m skipped: ${left}s left" >>"$WORK/tpall.log"; continue; fi
    if [ "$m" = tp-invariant ]; then
      VLLM_BI_TP_INVARIANT=1 timeout "$left" $BENCH --modes plugin --variant tp-invariant \
        --timeout $((left - 10)) --out "$RESULT" >>"$WORK/tpall.log" 2>&1
    else
      timeout "$left" $BENCH --modes "$m" --timeout $((left - 10)) --out "$RESULT" \
        >>"$WORK/tpall.log" 2>&1
    fi
    echo "== $m exit $? at $(date -u +%H:%M:%S)" >>"$WORK/tpall.log"
  done
  cp "$RESULT" "$WORK/" 2>/dev/null
  TAIL=45 after_jobs
  ;;
rldiag)
  # GPU A: #13, where the trainer leaves vLLM's arithmetic (rl_op_diff.py, one prompt, every
  # layer's tensors). GPU B: #10, the 0.6B prefill-heavy load with piecewise CUDA graphs up to
  # 16384 tokens (the plugin's ops cost host time that graphs remove) beside default and plugin.
  SIZES=$(python3 -c "print([1,2,4]+list(range(8,256,8))+list(range(256,513,16))+[640,768,1024,1536,2048,3072,4096,6144,8192,12288,16384])")
  gpu_job 0 240 rldiag bash -c "python3 tests-integration/gpu/rl_check_gpu.py make-model \
    && python3 tests-integration/gpu/rl_op_diff.py --out $OUT/rl_op_diff.json"
  [ "$NGPU" -lt 2 ] && wait
  BENCH="python3 benchmarks/vllm_serving.py --shape 0.6b --loads prefill-heavy --model-dir /tmp/models --out $OUT/vllm_serving_graphs.json"
  gpu_job "$GPU_B" 470 graphs bash -c "$BENCH --modes default,plugin --timeout 200; \
    $BENCH --modes plugin --variant graphs16k --timeout 240 \
      --engine '{\"compilation_config\": {\"cudagraph_capture_sizes\": $SIZES}}'"
  TAIL=60 after_jobs
  ;;
rl)
  # #13: the RL check (eager rollout, then scoring, the AdamW step against the corrected fp32
  # reference) and the trainer benchmark; GPU B: the check with a compiled vLLM rollout.
  gpu_job 0 560 rl bash -c "python3 tests-integration/gpu/rl_check_gpu.py all --timeout 240; \
    python3 packages/bi-train/bench/bench_trainer.py --out $OUT/bench_trainer.json"
  [ "$NGPU" -lt 2 ] && wait
  gpu_job "$GPU_B" 560 rl_compiled env RL_CHECK_DIR=/tmp/rl_check_c OUT=$WORK/rlc \
    python3 tests-integration/gpu/rl_check_gpu.py all --compile --timeout 240
  TAIL=40 after_jobs
  cp "$WORK"/rlc/rl_check_gpu.json "$OUT/rl_check_gpu_compiled.json" 2>/dev/null
  ;;
graphs)
  # #10: the plugin's default CUDA-graph sizes (up to 16384 tokens) on every load, against
  # the plugin with VLLM_BI_PREFILL_GRAPHS=0 and default vLLM; 0.6B on GPU A, 8B on GPU B.
  for shape in 0.6b 8b; do
    gpu=$([ "$shape" = 8b ] && echo "$GPU_B" || echo 0)
    gpu_job "$gpu" 560 "graphs_$shape" bash -c "B='python3 benchmarks/vllm_serving.py \
      --shape $shape --model-dir /tmp/models-$shape --timeout 170 \
      --out $OUT/vllm_serving_graphs_$shape.json'; \$B --modes default,plugin; \
      VLLM_BI_PREFILL_GRAPHS=0 \$B --modes plugin --variant vllm-graph-sizes"
    [ "$NGPU" -lt 2 ] && wait
  done
  TAIL=30 after_jobs
  ;;
gemm)
  # #4's GEMM table with every column the issue names: ours, cuBLAS, cuBLAS without split-K,
  # Thinking Machines' and vLLM's published batch-invariant matmuls (carry .upstream/tml, made
  # with the fetch tool, never committed; vLLM's file comes with the staged vLLM).
  gpu_job 0 560 gemm python3 packages/bi-triton-ascend/bench/bench_gemm.py \
    --tml .upstream/tml/batch_invariant_ops.py \
    --vllm /tmp/vllm-site/vllm/model_executor/layers/batch_invariant.py
  [ "$NGPU" -lt 2 ] && wait
  gpu_job "$GPU_B" 560 model python3 benchmarks/model_decoder.py --shapes 0.6b \
    --out "$OUT/model_decoder_0.6b.json"
  after_jobs
  ;;
profile)
  # Where the plugin loses time (#10, #4): kernels ranked by device time, default vs plugin.
  # GPU A: 0.6B prefill-heavy (the 0.42x load); GPU B: 8B prefill, then 0.6B eager decode.
  gpu_job 0 500 prof_06b_prefill python3 benchmarks/profile_vllm.py --shape 0.6b --load prefill \
    --model-dir /tmp/models --out "$WORK/prof-0.6b-prefill"
  gpu_job "$GPU_B" 500 prof_8b bash -c "python3 benchmarks/profile_vllm.py --shape 8b \
    --load prefill --prompts 16 --model-dir /tmp/models --out $WORK/prof-8b-prefill; \
    python3 benchmarks/profile_vllm.py --shape 0.6b --load decode --enforce-eager \
    --model-dir /tmp/models-b --out $WORK/prof-0.6b-decode-eager"
  wait
  for d in "$WORK"/prof-*; do cp "$d/profile_vllm.json" "$OUT/profile_vllm_${d##*/prof-}.json"; done
  TAIL=30 after_jobs
  ;;
serve)
  # GPU A: vllm serve, 64 concurrent requests vs the offline engine (#10); GPU B: the attention
  # backend smoke (#12), after the full-CUDA-graph change.
  gpu_job 0 560 serve python3 tests-integration/gpu/serve_vllm_gpu.py \
    --out "$OUT/serve_vllm_gpu.json" --log-dir "$WORK/serve-logs"
  gpu_job "$GPU_B" 560 attn python3 tests-integration/gpu/attn_backend_smoke.py \
    --out "$WORK/attn_backend_smoke.json"  # its engine logs stay in $WORK (the tarball)
  TAIL=40 after_jobs
  ;;
attn)
  gpu_job 0 300 attn python3 tests-integration/gpu/attn_backend_smoke.py \
    --out "$OUT/attn_backend_smoke.json"
  TAIL=60 after_jobs
  ;;
multi)
  # Each named job of scripts/gpu/jobs.sh on its own GPU, round robin (jobs that share a GPU run
  # one after another). Every job writes under $WORK/<job>; everything comes back in one tarball
  # (files over 20 MB left out), so a 4-GPU call returns one file however many results it makes.
  shift
  declare -A QUEUE=()
  i=0
  for job in "$@"; do
    g=$((i % NGPU)); QUEUE[$g]="${QUEUE[$g]:-} $job"; i=$((i + 1))
  done
  for g in "${!QUEUE[@]}"; do
    (for job in ${QUEUE[$g]}; do
       mkdir -p "$WORK/$job"
       echo "== $job on GPU $g from $(date -u +%H:%M:%S)" >"$WORK/$job.log"
       secs_var=JOB_SECS_$job  # a per-job limit (JOB_SECS_tunegemm=...) overrides JOB_SECS
       CUDA_VISIBLE_DEVICES=$g JOB_DIR="$WORK/$job" timeout "${!secs_var:-${JOB_SECS:-540}}" \
         bash -c "source scripts/gpu/jobs.sh && job_$job" >>"$WORK/$job.log" 2>&1
       echo "== $job exit $? at $(date -u +%H:%M:%S)" >>"$WORK/$job.log"
     done) &
  done
  wait
  for f in "$WORK"/*.log; do
    echo "---------------- $(basename "$f")"
    tail -n "${TAIL:-25}" "$f"
  done
  (cd "$WORK" && find . -type f -size -20M -print0 | tar czf "$OUT/$PHASE-logs.tgz" --null -T -)
  ls -la "$OUT"
  ;;
*)
  echo "unknown phase $PHASE; expected kernels, e2e, bench, tp or attn"
  exit 2
  ;;
esac
