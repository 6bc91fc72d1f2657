# GPU jobs for `session.sh multi JOB...`: each function is one job that fits one GPU for one
# device call (< 9 minutes). Sourced by session.sh in a child shell with CUDA_VISIBLE_DEVICES
# set to the job's GPU, $WORK/$JOB as its folder for results and logs (all of it comes back
# in the phase's tarball) and the repository root as working directory.
# Jobs marked "vLLM" need the staged vLLM (the p2 call or later).

# The Triton CUDA suite, ir-dispatch's CUDA tests (graphs, compile) and the host cost per call.
job_triton() {
  python3 -m pytest packages/bi-triton-ascend/tests -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_cuda.junit.xml"
  python3 -m pytest packages/ir-dispatch/tests/test_cuda.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/ir_dispatch_cuda.junit.xml"
  python3 benchmarks/host_cost.py --out "$JOB_DIR"
}

# #5: which built FP8 configs give the same bits (needs the nvidia-cutlass wheel), then the
# FP8 benchmark with the current selection.
job_fp8() {
  python3 -m pytest packages/bi-cutlass-fp8/tests/test_scaled_mm.py -k same_bits -q \
    -p no:cacheprovider -rs --junitxml="$JOB_DIR/fp8_same_bits.junit.xml"
  OUT=$JOB_DIR python3 packages/bi-cutlass-fp8/bench/bench_fp8.py
}

# #4: the model-level decoder benchmark, 0.6B shape.
job_model() {
  python3 benchmarks/model_decoder.py --shapes 0.6b --out "$JOB_DIR/model_decoder_0.6b.json"
}

# vLLM. #13: the RL check with an eager rollout (scoring, AdamW step against the corrected fp32
# reference), then the trainer benchmark.
job_rl() {
  OUT=$JOB_DIR python3 tests-integration/gpu/rl_check_gpu.py all --timeout 240
  python3 packages/bi-train/bench/bench_trainer.py --out "$JOB_DIR/bench_trainer.json"
}

# vLLM. #13: the RL check with a compiled vLLM rollout.
job_rlc() {
  RL_CHECK_DIR=/tmp/rl_check_c OUT=$JOB_DIR \
    python3 tests-integration/gpu/rl_check_gpu.py all --compile --timeout 240
}

# vLLM. #10: the plugin's default CUDA-graph sizes (up to 16384 tokens) on every load, against
# the plugin with VLLM_BI_PREFILL_GRAPHS=0 and default vLLM. One shape per job.
graphs_for() {
  local bench=(python3 benchmarks/vllm_serving.py --shape "$1" --model-dir "/tmp/models-$1"
    --timeout 170 --out "$JOB_DIR/vllm_serving_graphs_$1.json")
  "${bench[@]}" --modes default,plugin
  VLLM_BI_PREFILL_GRAPHS=0 "${bench[@]}" --modes plugin --variant vllm-graph-sizes
}
job_graphs06() { graphs_for 0.6b; }
job_graphs8() { graphs_for 8b; }

# vLLM. #4: the GEMM table with every column the issue names (carry .upstream/tml).
job_gemm() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/bench_gemm.py \
    --tml .upstream/tml/batch_invariant_ops.py \
    --vllm /tmp/vllm-site/vllm/model_executor/layers/batch_invariant.py
}

# #4: TMA against pointer loads for the one-segment chains (same bits checked per candidate).
job_probetma() {
  (cd packages/bi-triton-ascend/bench && OUT=$JOB_DIR python3 probe_tma_gemm.py --tag _2)
}

# #4: the TMA kernel's tests and the GEMM tests it shares a path with, on CUDA.
job_gemmtma() {
  timeout 400 python3 -m pytest packages/bi-triton-ascend/tests/test_gemm_tma.py \
    packages/bi-triton-ascend/tests/test_gemm.py packages/bi-triton-ascend/tests/test_launch_cache.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/bi_triton_gemm_tma_cuda.junit.xml"
}

# vLLM. #10, #4: the 0.6B prefill profile (kernels ranked by device time, default vs plugin).
job_rmsprof() {
  python3 benchmarks/profile_vllm.py --shape 0.6b --load prefill --model-dir /tmp/models-prof \
    --out "$JOB_DIR/prof-rms"
}

# vLLM. #12: the long-context loads with the kit attention backend (VLLM_BI_ATTENTION=1),
# labelled plugin+attention.
job_longattn() {
  VLLM_BI_ATTENTION=1 python3 benchmarks/vllm_serving.py --shape 8b --modes plugin \
    --variant attention --loads long-single,long-batch8 --timeout 500 \
    --model-dir /tmp/models-longattn --out "$JOB_DIR/vllm_long_attention.json"
}

# vLLM. #12: the baseline of the long-context loads (default vLLM, vLLM's own mode).
job_longbase() {
  python3 benchmarks/vllm_serving.py --shape 8b --modes default,vllm-bi \
    --loads long-single,long-batch8 --timeout 500 --model-dir /tmp/models-longbase \
    --out "$JOB_DIR/vllm_long_base.json"
}

# vLLM. #10: the needle end to end (all cases, three modes) with the plugin's current defaults.
e2e_for() {
  python3 tests-integration/gpu/e2e_vllm_gpu.py --shape "$1" --parallel 3 --gpus 0 \
    --out "$JOB_DIR/e2e_vllm_gpu_$1.json" --log-dir "$JOB_DIR/logs" "${@:2}"
}
# The 8B needle's engines run three to a GPU: each gets a fixed 2 GiB KV cache.
E2E8_ENGINE='{"kv_cache_memory_bytes": 2147483648}'
job_e2e06() { e2e_for 0.6b; }
job_e2e8() { e2e_for 8b --engine "$E2E8_ENGINE"; }

# vLLM. #10: vLLM's own batch-invariant mode on every load, beside the graphs jobs' columns.
vllmbi_for() {
  python3 benchmarks/vllm_serving.py --shape "$1" --modes vllm-bi --model-dir "/tmp/models-$1" \
    --timeout 250 --out "$JOB_DIR/vllm_serving_vllmbi_$1.json"
}
job_vllmbi06() { vllmbi_for 0.6b; }
job_vllmbi8() { vllmbi_for 8b; }

# vLLM. #10: the benchmark in one run at the 8B width: default, vLLM's own mode and the
# plugin one after another on one GPU (about 7 minutes).
job_serve8all() {
  python3 benchmarks/vllm_serving.py --shape 8b --modes default,vllm-bi,plugin --timeout 230 \
    --model-dir /tmp/models-8b --out "$JOB_DIR/vllm_serving_8b_three_modes.json"
}

# #5: the whole FP8 suite (invariance with the tile following M, accuracy, same bits), then the
# benchmark with the per-M selection.
job_fp8full() {
  python3 -m pytest packages/bi-cutlass-fp8/tests -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/fp8_cuda.junit.xml"
  OUT=$JOB_DIR python3 packages/bi-cutlass-fp8/bench/bench_fp8.py
}

# #13: the attention backward kernel's CUDA tests, bi-train's tests on the GPU, the trainer
# benchmark.
job_bwd() {
  python3 -m pytest packages/bi-triton-ascend/tests/attention/test_attn_backward.py -q \
    -p no:cacheprovider -rs --junitxml="$JOB_DIR/attn_backward_cuda.junit.xml"
  python3 packages/bi-train/bench/bench_trainer.py --out "$JOB_DIR/bench_trainer.json"
}

# #4, #10: the GEMM tile sweep on this card (each candidate's bits checked against the default
# tiles), for the M <= 512 bands where the H200 runs at 0.64-0.91x cuBLAS.
job_tunegemm() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_gemm.py --ms 1,8,32,128,256,512
}

# #12, #13, #10: the attention's tiles (rows, warps, stages) timed on prefill, chunked prefill
# and decode, each candidate's bits compared with the default tiles'.
job_tuneattn() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_attention.py
}

# #12: the decode attention benchmark (split vs no split, sdpa) and the trainer-side prefill.
job_attnbench() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/bench_attention.py --rep 25
}

# #12: the attention tests on CUDA alone (the tile family's same-bits check among them).
job_attncuda() {
  python3 -m pytest packages/bi-triton-ascend/tests/attention -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/attn_cuda.junit.xml"
}

# vLLM. #12, #13: the long-context loads with the kit attention (labelled plugin+attention), then
# default vLLM on the same GPU, into one JSON (a cut-off call keeps the modes it finished).
job_longcmp() {
  local bench=(python3 benchmarks/vllm_serving.py --shape 8b --loads long-single,long-batch8
    --model-dir /tmp/models-longcmp --out "$JOB_DIR/vllm_long_context.json")
  VLLM_BI_ATTENTION=1 "${bench[@]}" --modes plugin --variant attention --timeout 300
  "${bench[@]}" --modes default --timeout 220
}

# vLLM. #13: where the RL rollout's time goes: the RL check's model (0.6B width, 4 layers), 256
# prompts x 512 tokens, sampled at temperature 1 with the sampled tokens' logprobs; default vLLM
# against the plugin with the kit attention (VLLM_BI_ATTENTION=1; default mode ignores it).
job_rollprof() {
  VLLM_BI_ATTENTION=1 python3 benchmarks/profile_vllm.py --shape 0.6b --layers 4 --load decode \
    --prompts 256 --prompt-len 512 --max-tokens 64 --temperature 1 --logprobs 0 --top 40 \
    --model-dir /tmp/models-rollprof --timeout 240 --out "$JOB_DIR"
}

# #4: the GEMM tile sweep at M = 256 (the H100 point a per-device table still needs).
job_tunegemm256() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_gemm.py --ms 256
}

# #12: whether 256-row prefill tiles are faster than the 128-row ones and keep the bits.
job_tuneattn256() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_attention.py \
    --cases prefill4x4k,prefill1x16k,chunk4k@16k --tiles 128x8x3,256x16x3,256x8x2
}

# #4, #13: the host cost per call of each op path (torch, kernel, select, ir_op, graph).
job_hostcost() {
  python3 benchmarks/host_cost.py --out "$JOB_DIR"
}

# vLLM. #10, #5: the 8B needle with an FP8 model alone (the per-M CUTLASS tiles inside vLLM).
job_e2e8fp8() { e2e_for 8b --cases fp8 --engine "$E2E8_ENGINE"; }

# #4, #10: the GEMM's CUDA tests (rows invariant across M = 1..8192, tile freedom) after a change
# of the tile table.
job_gemmcuda() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_cuda.py \
    packages/bi-triton-ascend/tests/test_gemm.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/gemm_cuda.junit.xml"
}

# vLLM. #10: the serving loads at the 8B width, default and plugin (one call).
job_serve8() {
  python3 benchmarks/vllm_serving.py --shape 8b --modes default,plugin --timeout 250 \
    --model-dir /tmp/models-8b --out "$JOB_DIR/vllm_serving_8b.json"
}

# vLLM. #10: the 0.6B decode-heavy and single-stream loads, default and plugin (the M = 256 tiles).
job_serve06dec() {
  python3 benchmarks/vllm_serving.py --shape 0.6b --modes default,plugin --timeout 150 \
    --loads decode-heavy,single-stream --model-dir /tmp/models-06 \
    --out "$JOB_DIR/vllm_serving_0.6b.json"
}

# #12, #13 (branch wip/attn-table-prefetch): the block-table prefetch of paged keys, timed beside
# the launcher's tiles on the paged cases (same bits by construction; the sweep and the test
# check it), then the attention suite on CUDA with the branch's kernels.
job_attnprefetch() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 25 \
    --cases chunk4k@16k,decode1x32k,decode8x8k,decode64x1k \
    --tiles 64x4x2,64x4x2p,64x4x3,64x4x3p,128x8x2,128x8x2p
  python3 -m pytest packages/bi-triton-ascend/tests/attention -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/attn_prefetch_cuda.junit.xml"
}

# #13 (branch wip/softmax-dtype-free): the softmax kernels' bits do not depend on the input
# dtype (CUDA tests), then the RL check with vLLM's token logprobs read from bf16 logits (no fp32
# copy) against a trainer that upcasts, then the rollout profile to measure the saved copy.
job_softmaxdtype() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_softmax.py \
    packages/bi-triton-ascend/tests/test_cuda.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/softmax_dtype_cuda.junit.xml"
  RL_CHECK_DIR=/tmp/rl_check_c OUT=$JOB_DIR \
    python3 tests-integration/gpu/rl_check_gpu.py all --compile --timeout 240
}

# #4, #10 (branch wip/gemm-split-order): the split kernel's tiles in grouped order (row tiles
# first within a column block, so programs sharing weight columns run together) against the
# old row-major order (g1), at the mid-M points of the GEMM benchmark; then the GEMM CUDA tests.
job_gemmorder() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_gemm.py --ms 128,512 \
    --split-groups 1,8 --tag _order
  python3 -m pytest packages/bi-triton-ascend/tests/test_cuda.py \
    packages/bi-triton-ascend/tests/test_gemm.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/gemm_order_cuda.junit.xml"
}

# #13 (branch wip/token-logprobs): the token-logprob gather kernel against log_softmax + gather,
# bitwise, on CUDA (batches up to 1000 rows), with the softmax suite beside it.
job_tlpcuda() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_token_logprobs.py \
    packages/bi-triton-ascend/tests/test_softmax.py packages/bi-triton-ascend/tests/test_providers.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/token_logprobs_cuda.junit.xml"
}

# vLLM. #10: the benchmark in one run at the 0.6B width (three modes, one GPU).
job_serve06all() {
  python3 benchmarks/vllm_serving.py --shape 0.6b --modes default,vllm-bi,plugin --timeout 170 \
    --model-dir /tmp/models-06 --out "$JOB_DIR/vllm_serving_0.6b_three_modes.json"
}

# vLLM. #10: where vLLM's own mode gains on 0.6B decode-heavy (1.10x default, the plugin 0.965x
# in serve06all): the decode-heavy shape of load profiled in all three modes.
job_prof06dec() {
  python3 benchmarks/profile_vllm.py --shape 0.6b --load decode --modes default,vllm-bi,plugin \
    --prompts 256 --prompt-len 256 --max-tokens 64 --top 40 --model-dir /tmp/models-prof06 \
    --timeout 200 --out "$JOB_DIR"
}

# #12, #13: the one paged configuration whose key loop is software-pipelined on sm90 (3 stages
# with the block-table prefetch: cp.async.wait_group 2, per bench/sm90_ptx.py), timed on the
# paged prefill and decode cases beside the launcher's tiles (same bits by construction).
job_attnpipe() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 25 \
    --cases chunk4k@16k,decode1x32k,decode8x8k,decode64x1k \
    --tiles 128x8x2p,128x8x3p,64x4x2,64x4x3p
}

# #12: why paged decode reads its KV cache at 1.2-2.0 TB/s: Nsight Compute on the launcher's
# decode kernels (speed of light, memory, warp stalls, occupancy), a few launches per case.
job_ncuattn() {
  local ncu=(ncu --clock-control none --target-processes all --launch-skip 20 --launch-count 4
    -k "regex:_attn_kernel|_combine_kernel" --section SpeedOfLight --section MemoryWorkloadAnalysis
    --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats
    --section SourceCounters)
  for case in decode1x32k decode8x8k decode64x1k; do
    echo "==== $case"
    OUT=$JOB_DIR/$case "${ncu[@]}" python3 packages/bi-triton-ascend/bench/tune_attention.py \
      --rep 1 --cases "$case" --tiles 64x4x2
  done
}

# vLLM. #10: where the plugin loses on 0.6B prefill-heavy (0.948-0.951x default): the prefill
# load (32 x 2048 in) profiled in default and plugin mode.
job_prof06pre() {
  python3 benchmarks/profile_vllm.py --shape 0.6b --load prefill --modes default,plugin \
    --top 40 --model-dir /tmp/models-prof06 --timeout 200 --out "$JOB_DIR"
}

# attention_before_after FILES CASES [TILES]: TILES (default the launcher's decode tile) on
# CASES, with the tree as it is and with .bench-old/FILE in place of each attention module FILE
# of FILES (comma-separated; a copy of the tree in /tmp), one after the other, twice; results
# under $JOB_DIR/before<n>, after<n>.
attention_before_after() {
  local files=$1 cases=$2 tiles=${3:-64x4x2} old=/tmp/old-tree file
  rm -rf "$old" && mkdir -p "$old" && cp -r packages benchmarks "$old"/
  for file in ${files//,/ }; do
    cp "${OLD_DIR:-.bench-old}/$file" "$old/packages/bi-triton-ascend/src/bi_triton_ascend/attention/" \
      || return 1
  done
  for rep in 1 2; do
    OUT=$JOB_DIR/before$rep python3 "$old/packages/bi-triton-ascend/bench/tune_attention.py" \
      --rep 25 --cases "$cases" --tiles "$tiles"
    OUT=$JOB_DIR/after$rep python3 packages/bi-triton-ascend/bench/tune_attention.py \
      --rep 25 --cases "$cases" --tiles "$tiles"
  done
}

# #12: the combine kernel with its loads two groups ahead of the folds, timed against the
# previous form (carry .bench-old: the previous _kernels.py) on the split decode cases, one
# after the other twice; then the attention suite on CUDA (split equals fused at 32k, graphs).
job_combinepipe() {
  attention_before_after _kernels.py decode1x32k,decode1x32k@40k,decode8x8k,decode64x1k
  ncu --clock-control none --launch-skip 30 --launch-count 1 -k regex:_combine_kernel \
    --section SpeedOfLight python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 1 \
    --cases decode1x32k --tiles 64x4x2
  python3 -m pytest packages/bi-triton-ascend/tests/attention -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/attn_combine_cuda.junit.xml"
}

# #12: a longer KV chunk (512 keys: half the folds per sequence, other bits) timed against the
# launcher's 256 on decode and prefill, then the combine kernel's warp stalls (Nsight Compute).
job_chunk512() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 25 \
    --cases decode1x32k,decode1x32k@40k,decode8x8k,decode64x1k,chunk4k@16k,prefill1x16k \
    --tiles 64x4x2,64x4x2c512,128x8x2p,128x8x2pc512
  ncu --clock-control none --launch-skip 30 --launch-count 1 -k regex:_combine_kernel \
    --section WarpStateStats --section SourceCounters --section InstructionStats \
    python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 1 --cases decode1x32k \
    --tiles 64x4x2
}

# #12, #13 (branch wip/attn-chunk-grid): the two-length chunk grid (256-key chunks up to key
# 4096, 512-key chunks after). The attention CUDA suite (decode, prefill, prompt cuts and windows
# around the switch at model sizes, the tile family, graphs), then the launcher's decode tile
# timed with main's attention module (before) and the branch's (after), twice, on the decode
# cases (32k keys: 72 chunks instead of 128; 40k bound: 88 instead of 160; 1k: 4 either way)
# and a paged prefill chunk. Needs .bench-old/ with main's copies (its __init__.py too: the
# branch's imports names main's config.py lacks), made in the repository root before the call:
#   mkdir -p .bench-old && for f in _kernels.py _launch.py config.py __init__.py; do
#     git show main:packages/bi-triton-ascend/src/bi_triton_ascend/attention/$f > .bench-old/$f
#   done
# About 3.5 minutes of tests and 2-2.5 of timings on an H100.
job_chunkgrid() {
  python3 -m pytest packages/bi-triton-ascend/tests/attention/test_attn_cuda.py -q \
    -p no:cacheprovider -rs --junitxml="$JOB_DIR/attn_chunkgrid_cuda.junit.xml"
  attention_before_after _kernels.py,_launch.py,config.py,__init__.py \
    decode1x32k,decode1x32k@40k,decode8x8k,decode64x1k,chunk4k@16k
}

# vLLM. #10: where the plugin's 0.6B single-stream decode loses to default (0.91-0.96x): one
# prompt, 256 greedy tokens, default and plugin profiled.
job_prof06single() {
  python3 benchmarks/profile_vllm.py --shape 0.6b --load decode --modes default,plugin \
    --prompts 1 --prompt-len 16 --max-tokens 256 --top 40 --model-dir /tmp/models-prof06 \
    --timeout 200 --out "$JOB_DIR"
}

# #12: the fused launch's key loop as one loop over every chunk (no pipeline drain at chunk
# ends; same bits), timed against the loop per chunk (carry .bench-old: main's _kernels.py) on
# prefill and fused decode; prefill tiles at 2 and 3 stages (3 may pipeline now).
job_flatloop() {
  attention_before_after _kernels.py prefill1x16k,chunk4k@16k,decode64x1k \
    128x8x2p,128x8x3p,64x4x2
}

# #12: 128-key tiles (another chain; other bits) against the launcher's 64 on prefill and decode,
# and whether the tile family (64 rows / 4 warps, 128 rows / 8 warps) keeps its bits with them.
job_tilesn128() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 25 \
    --cases prefill1x16k,chunk4k@16k,decode1x32k,decode8x8k \
    --tiles 128x8x2p,128x8x2pn128,128x8x3pn128,64x4x2n128,64x8x2n128,128x8x2pn32
}

# #12: what bounds the prefill tile (128 rows, 8 warps, 3 stages) on a long packed causal prefill,
# where PyTorch's SDPA runs ~1.8x faster: pipe utilization, warp stalls, occupancy (ncu).
job_ncuprefill() {
  ncu --clock-control none --launch-skip 20 --launch-count 1 -k regex:_attn_kernel \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
    --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
    python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 1 --cases prefill4x4k \
    --tiles 128x8x3 > "$JOB_DIR/ncu_attention_prefill.txt" 2>&1
  tail -n 120 "$JOB_DIR/ncu_attention_prefill.txt"
}

# #12, #13: the score scale inside the exponent's FMA (another chain), timed against the chunk
# grid's kernels without it (carry .bench-old-fma: the grid branch's _kernels.py), then the
# prefill tile's bottleneck (ncuprefill).
job_fmascores() {
  OLD_DIR=.bench-old-fma attention_before_after _kernels.py \
    prefill1x16k,chunk4k@16k,decode1x32k,decode8x8k 128x8x3p,64x4x2
}

# #10, #13: the fused Qwen3 q/k norm + RoPE (one launch, the two-step bits): its CUDA tests and
# the RMSNorm suite (short rows now reduce as two halves), the bi-triton CUDA GEMM/norm tests.
job_qkcuda() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_qk_norm_rope.py \
    packages/bi-triton-ascend/tests/test_rms_norm.py packages/bi-triton-ascend/tests/test_providers.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/qk_norm_rope_cuda.junit.xml"
}

# vLLM. #10: the plugin at the 0.6B width with the q/k fusion off (VLLM_BI_QK_FUSION=0), to set
# beside serve06all's plugin column on the same card.
job_serve06qkoff() {
  VLLM_BI_QK_FUSION=0 python3 benchmarks/vllm_serving.py --shape 0.6b --modes plugin \
    --timeout 170 --model-dir /tmp/models-06 --out "$JOB_DIR/vllm_serving_0.6b_plugin_qk_off.json"
}

# vLLM. #10: the q/k fusion on and off, alternating engine starts on one card (single-stream
# decode and prefill-heavy at the 0.6B width, 5 repetitions each): engine-to-engine spread
# is as large as the effect, so each setting gets two engines.
job_qkab() {
  local fusion
  for i in $(seq 1 "${QKAB_RUNS:-2}"); do
    for fusion in 1 0; do
      VLLM_BI_QK_FUSION=$fusion python3 benchmarks/vllm_serving.py --shape 0.6b --modes plugin \
        --loads single-stream,prefill-heavy --reps 5 --variant "qk$fusion" --timeout 150 \
        --model-dir /tmp/models-06 --out "$JOB_DIR/vllm_serving_0.6b_qk_fusion${fusion}_run$i.json"
    done
  done
}

# #10: the q/k norm + RoPE fusion's GPU time per layer against the steps it replaces, in CUDA
# graphs at decode and prefill token counts (no vLLM: the engine-to-engine spread left out).
job_qkbench() {
  OUT=$JOB_DIR python3 packages/bi-triton-ascend/bench/bench_qk_norm_rope.py
}

# vLLM. #10: 8B decode-heavy, all three modes, in order and then reversed (--rounds 2): the
# plugin against vLLM's own mode with the engine drift cancelled (about 8 minutes).
job_serve8abba() {
  python3 benchmarks/vllm_serving.py --shape 8b --modes default,vllm-bi,plugin \
    --loads decode-heavy --rounds 2 --reps 5 --timeout 120 --model-dir /tmp/models-8 \
    --out "$JOB_DIR/vllm_serving_8b_decode_abba.json"
}

# #4: the model-level decoder benchmark, 0.6B shape, with the CUDA-graph column beside eager and
# compile (what the BI kernels give without the per-op host cost; not part of the target).
job_modelgraphs() {
  python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile,graphs \
    --out "$JOB_DIR/model_decoder_0.6b_graphs.json"
}

# #4: bi_triton_ascend's launch table (kernels launched without Triton's per-call binding).
# The CUDA kernel tests through it, the host cost per call with it on and off, and the model
# level (0.6B) in eager with it off, then on in every compile mode.
job_launchab() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_cuda.py -q -p no:cacheprovider -rs -x \
    --junitxml="$JOB_DIR/bi_triton_cuda_launch_table.junit.xml"
  python3 benchmarks/host_cost.py --out "$JOB_DIR" --label launch_table
  BI_TRITON_LAUNCH_CACHE=0 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager \
    --out "$JOB_DIR/model_decoder_0.6b_triton_run.json"
  python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile,graphs \
    --out "$JOB_DIR/model_decoder_0.6b_launch_table.json"
}

# #4: where the model-level time goes, default vs batch-invariant (torch.profiler, eager).
job_modelprof() {
  python3 benchmarks/profile_model.py --shape 0.6b --out "$JOB_DIR"
  python3 benchmarks/profile_model.py --shape 8b --out "$JOB_DIR"
}

# #4: linear's and matmul's launch plans on top of the launch table: the GEMM tests on CUDA
# (plans replayed with new pointers), the host cost per call, and the model level at both
# widths (0.6B in every compile mode, 8B eager and compile).
job_hostpath() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_cuda.py \
    packages/bi-triton-ascend/tests/test_gemm.py packages/bi-triton-ascend/tests/test_launch_cache.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/bi_triton_gemm_plans_cuda.junit.xml"
  python3 benchmarks/host_cost.py --out "$JOB_DIR" --label plans
  python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile,graphs \
    --out "$JOB_DIR/model_decoder_0.6b_plans.json"
  python3 benchmarks/model_decoder.py --shapes 8b --compile eager,compile \
    --out "$JOB_DIR/model_decoder_8b_plans.json"
}

# #4: the model level after the GEMM plans (mm/addmm/bmm too), with the Python profile of a
# batch-invariant decode step beside the kernel table.
job_modelprof2() {
  python3 benchmarks/profile_model.py --shape 0.6b --out "$JOB_DIR"
  python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile \
    --out "$JOB_DIR/model_decoder_0.6b_mm_plans.json"
}

# #4: the launch plans of every op on CUDA (GEMM, mean, softmax tests), the host cost per call,
# then the 8B model level (eager, compile).
job_plans8() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_gemm.py \
    packages/bi-triton-ascend/tests/test_mean.py packages/bi-triton-ascend/tests/test_softmax.py \
    packages/bi-triton-ascend/tests/test_launch_cache.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_plans_cuda.junit.xml"
  python3 benchmarks/host_cost.py --out "$JOB_DIR" --label plans
  python3 benchmarks/model_decoder.py --shapes 8b --compile eager,compile \
    --out "$JOB_DIR/model_decoder_8b_plans.json"
}

# #4: the 0.6B model level in every compile mode, two rounds (the second in reverse order).
job_plans06() {
  python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile,graphs --rounds 2 \
    --out "$JOB_DIR/model_decoder_0.6b_plans.json"
}

# #4: why eager decode is slower than the per-call host costs predict: the 0.6B profile with
# the unprofiled wall and enqueue time, GPU synchronizations and launch-table/plan hit counts;
# then the RMSNorm tests on CUDA (its launch plans had run on the CPU only).
job_decodediag() {
  python3 benchmarks/profile_model.py --shape 0.6b --out "$JOB_DIR"
  python3 -m pytest packages/bi-triton-ascend/tests/test_rms_norm.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_rms_norm_plans_cuda.junit.xml"
}

# #4: the fast lane (selection remembered per layout, prepared launches through Triton's C
# launcher): the CUDA tests of the table, plans and remembered calls, then the 0.6B profile
# with its host diagnostics.
job_fastlane() {
  python3 -m pytest packages/bi-triton-ascend/tests/test_prepared.py \
    packages/bi-triton-ascend/tests/test_launch_cache.py packages/bi-triton-ascend/tests/test_cuda.py \
    packages/bi-triton-ascend/tests/test_mean.py packages/bi-triton-ascend/tests/test_softmax.py \
    packages/bi-triton-ascend/tests/test_rms_norm.py packages/bi-triton-ascend/tests/test_gemm.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/fast_lane_cuda.junit.xml"
  python3 -m pytest packages/ir-dispatch/tests/test_cuda.py packages/ir-dispatch/tests/test_remembered.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/ir_dispatch_fast_lane_cuda.junit.xml"
  python3 benchmarks/profile_model.py --shape 0.6b --out "$JOB_DIR"
}

# #4: the fast lane with in-place out= GEMMs: its CUDA tests, then the model level at both
# widths (0.6B two rounds, 8B one), eager and compile. Each step has its own time limit.
job_fastlane2() {
  timeout 100 python3 -m pytest packages/bi-triton-ascend/tests/test_prepared.py \
    packages/bi-triton-ascend/tests/test_launch_cache.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_fast_lane_out_cuda.junit.xml"
  timeout 40 python3 -m pytest packages/ir-dispatch/tests/test_remembered.py \
    packages/ir-dispatch/tests/test_overrides.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/ir_dispatch_fast_lane_out_cuda.junit.xml"
  timeout 230 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile \
    --rounds 2 --out "$JOB_DIR/model_decoder_0.6b_fast_lane_out.json"
  timeout 200 python3 benchmarks/model_decoder.py --shapes 8b --compile eager,compile \
    --out "$JOB_DIR/model_decoder_8b_fast_lane_out.json"
}

# #4: the final fast-lane tree: its CUDA tests, then the 0.6B model level (two rounds).
job_fastlane3() {
  timeout 100 python3 -m pytest packages/bi-triton-ascend/tests/test_prepared.py \
    packages/bi-triton-ascend/tests/test_launch_cache.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_fast_lane_final_cuda.junit.xml"
  timeout 200 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile \
    --rounds 2 --out "$JOB_DIR/model_decoder_0.6b_fast_lane_final.json"
}

# lowered_tests TAG SECONDS [PYTEST ARGS...]: bi-triton-ascend's lowering tests on CUDA, junit
# bi_triton_TAG_cuda.junit.xml.
lowered_tests() {
  local tag=$1 secs=$2
  shift 2
  timeout "$secs" python3 -m pytest packages/bi-triton-ascend/tests/test_lowered.py -q \
    -p no:cacheprovider -rs --junitxml="$JOB_DIR/bi_triton_${tag}_cuda.junit.xml" "$@"
}

# lowering_pass_tests TAG SECONDS: ir-dispatch's lowering pass and overrides tests on CUDA.
lowering_pass_tests() {
  timeout "$2" python3 -m pytest packages/ir-dispatch/tests/test_lowering.py \
    packages/ir-dispatch/tests/test_overrides.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/ir_dispatch_${1}_cuda.junit.xml"
}

# compiled_level_06 SECONDS: the 0.6B model level under torch.compile only, two rounds.
compiled_level_06() {
  timeout "$1" python3 benchmarks/model_decoder.py --shapes 0.6b --compile compile \
    --rounds 2 --out "$JOB_DIR/model_decoder_0.6b_lowered_compile.json"
}

# #4: GEMMs that Inductor launches itself (ir-dispatch's lowering pass): their CUDA tests, then
# the 0.6B model level (two rounds).
job_lowering() {
  lowered_tests lowered 200
  lowering_pass_tests lowering 60
  timeout 230 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile \
    --rounds 2 --out "$JOB_DIR/model_decoder_0.6b_lowered.json"
}

# #4: the lowering after the traced-view fix: its CUDA tests, the 0.6B compiled level (two
# rounds) and the compiled decode profile (which kernels a compiled step launches).
job_lowering2() {
  lowered_tests lowered2 150
  compiled_level_06 200
  timeout 150 python3 benchmarks/profile_model.py --shape 0.6b --compile compile \
    --out "$JOB_DIR"
}

# #4: the lowering with parameters (traced without grad) and a picklable pass: its CUDA tests,
# the 0.6B compiled level (two rounds), the compiled decode profile.
job_lowering3() {
  lowered_tests lowered3 60 -x -k "parameters or eagerly or lowered_launch"
  compiled_level_06 330
  timeout 160 python3 benchmarks/profile_model.py --shape 0.6b --compile compile --top 20 \
    --out "$JOB_DIR"
}

# #4: the lowering with the GEMM kernels' writes declared (no input copies): its CUDA tests,
# then the 0.6B compiled level (two rounds).
job_lowering4() {
  lowered_tests lowered4 170
  compiled_level_06 340
}

# #4: the same with torch 2.11's identify_mutated_tensors declared too.
job_lowering5() {
  lowered_tests lowered5 150
  compiled_level_06 320
}

# #4: the lowering (opt-in) with the writes found under torch's Autotuner wrap;
# its CUDA tests, then the 0.6B and 8B compiled levels with it on (two rounds each).
job_lowering6() {
  lowered_tests lowered6 150
  IR_DISPATCH_LOWER=1 compiled_level_06 320
}
job_lowering8() {
  IR_DISPATCH_LOWER=1 timeout 560 python3 benchmarks/model_decoder.py --shapes 8b \
    --compile eager,compile --rounds 2 --out "$JOB_DIR/model_decoder_8b_lowered.json"
}

# #4, sixteenth session: the lowering on by default (IR_DISPATCH_LOWER unset). Part a: its
# ir-dispatch CUDA tests, then the 0.6B model level, eager and compile, two rounds.
job_lowering9a() {
  unset IR_DISPATCH_LOWER
  lowering_pass_tests lowering_default 90
  timeout 440 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager,compile \
    --rounds 2 --out "$JOB_DIR/model_decoder_0.6b_lowering_default.json"
}

# Part b: the 8B model level, eager and compile, two rounds; then the host cost per call.
job_lowering9b() {
  unset IR_DISPATCH_LOWER
  timeout 330 python3 benchmarks/model_decoder.py --shapes 8b --compile eager,compile \
    --rounds 2 --out "$JOB_DIR/model_decoder_8b_lowering_default.json"
  timeout 150 python3 benchmarks/host_cost.py --out "$JOB_DIR" --label lowering_default
}

# #4: prepared launches pass their tensors' addresses as ints (no driver check per pointer):
# the launch tests on CUDA, the host cost per call, the 0.6B eager level (two rounds).
job_intptr() {
  timeout 90 python3 -m pytest packages/bi-triton-ascend/tests/test_prepared.py \
    packages/bi-triton-ascend/tests/test_launch_cache.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_int_pointers_cuda.junit.xml"
  timeout 130 python3 benchmarks/host_cost.py --out "$JOB_DIR" --label int_pointers
  timeout 130 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager \
    --rounds 2 --out "$JOB_DIR/model_decoder_0.6b_int_pointers.json"
}

# #4: the eager model level at both widths, four rounds each (the host's transients, tens of
# seconds long, land in one round of one mode; more rounds dilute them in the pooled median).
job_eager4() {
  timeout 130 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager \
    --rounds 4 --out "$JOB_DIR/model_decoder_0.6b_eager_4rounds.json"
  timeout 170 python3 benchmarks/model_decoder.py --shapes 8b --compile eager \
    --rounds 4 --out "$JOB_DIR/model_decoder_8b_eager_4rounds.json"
}

# #4: the eager model level with the modes interleaved repetition by repetition (BI rows get
# paired_ratio), at both widths.
job_modelab() {
  timeout 200 python3 benchmarks/model_decoder.py --shapes 0.6b --compile eager --interleave \
    --rounds 2 --reps 8 --out "$JOB_DIR/model_decoder_0.6b_eager_interleaved.json"
  timeout 260 python3 benchmarks/model_decoder.py --shapes 8b --compile eager --interleave \
    --rounds 2 --reps 8 --out "$JOB_DIR/model_decoder_8b_eager_interleaved.json"
}

# #4: reductions in compiled graphs routed to the kit (IR_DISPATCH_LOWER_REDUCTIONS=1: Inductor
# launches bi-triton's mean/softmax row kernels): the lowering tests on CUDA (the routed
# RMSNorm + softmax batch-invariant), then the 0.6B compiled level with the routing on (two
# rounds: speed, and the model's invariance check).
job_reductions() {
  lowered_tests reductions 200
  IR_DISPATCH_LOWER_REDUCTIONS=1 timeout 330 python3 benchmarks/model_decoder.py --shapes 0.6b \
    --compile compile --rounds 2 --out "$JOB_DIR/model_decoder_0.6b_compile_reductions.json"
}

# #4: the 0.6B compiled level with Inductor's own reductions (routing off), its invariance check
# and the compiled prefill profile at 16 x 512 (the cell at 0.77-0.81 in the sixteenth session).
job_compilebits() {
  unset IR_DISPATCH_LOWER
  export IR_DISPATCH_LOWER_REDUCTIONS=0  # the routing became the default after this job ran
  timeout 250 python3 benchmarks/model_decoder.py --shapes 0.6b --compile compile --rounds 2 \
    --out "$JOB_DIR/model_decoder_0.6b_compile_bits.json"
  compiled_profile_06 200 prefill:16x512,prefill:1x2048
}

# compiled_profile_06 SECONDS CASES: the 0.6B compiled profile (top 24 kernels) of CASES.
compiled_profile_06() {
  timeout "$1" python3 benchmarks/profile_model.py --shape 0.6b --compile compile --top 24 \
    --cases "$2" --out "$JOB_DIR"
}

# #4: where the compiled BI model loses its bits (benchmarks/compile_bits.py: one kind of
# submodule compiled at a time, reductions routed or not, Inductor's emulate_precision_casts),
# then the 0.6B compiled level with emulate_precision_casts on (speed and invariance check).
job_compilecasts() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 260 python3 benchmarks/compile_bits.py --shape 0.6b --layers 2 --out "$JOB_DIR"
  TORCHINDUCTOR_EMULATE_PRECISION_CASTS=1 timeout 250 python3 benchmarks/model_decoder.py \
    --shapes 0.6b --compile compile --rounds 2 \
    --out "$JOB_DIR/model_decoder_0.6b_compile_emulate_casts.json"
}

# #4: the compiled level with ir-dispatch's new defaults (reductions routed and eager casts kept
# in batch-invariant graphs): the 0.6B speed and invariance check, then the compiled profile at
# prefill 16 x 512 and decode batch 32.
job_compiledefault() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 380 python3 benchmarks/model_decoder.py --shapes 0.6b --compile compile --rounds 2 \
    --out "$JOB_DIR/model_decoder_0.6b_compile_invariant.json"
  compiled_profile_06 170 prefill:16x512,decode:32
}

# #4: compiled batch-invariant graphs made invariant by default (reductions routed, eager casts
# kept, a softmax cast back to bf16 written in bf16): the lowering tests on CUDA, then the
# compiled level at 0.6B and 8B (speed and the invariance check).
job_invariantcompile() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  lowered_tests invariant_compile 150
  lowering_pass_tests invariant_compile 60
  timeout 210 python3 benchmarks/model_decoder.py --shapes 0.6b --compile compile --rounds 2 \
    --out "$JOB_DIR/model_decoder_0.6b_compile_invariant_fold.json"
  timeout 160 python3 benchmarks/model_decoder.py --shapes 8b --compile compile --rounds 2 \
    --out "$JOB_DIR/model_decoder_8b_compile_invariant.json"
}

# #4: the 8B compiled level with the invariant defaults, with its invariance check (the
# invariantcompile job's 8B run was cut by its limit before the check).
job_invariant8b() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 480 python3 benchmarks/model_decoder.py --shapes 8b --compile compile --rounds 2 \
    --out "$JOB_DIR/model_decoder_8b_compile_invariant.json"
}

# #4, eighteenth session: RMSNorm's statistic read once (mean_of_squares, put in compiled graphs
# by ir-dispatch's pass) and short rows several to a program. Part a: the mean and lowering tests
# on CUDA, then the compiled 0.6B profile at prefill 16 x 512 and 1 x 2048.
job_meansqa() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 150 python3 -m pytest packages/bi-triton-ascend/tests/test_mean.py -q \
    -p no:cacheprovider -rs --junitxml="$JOB_DIR/bi_triton_mean_cuda.junit.xml"
  lowered_tests meansq 170
  compiled_profile_06 200 prefill:16x512,prefill:1x2048
}

# Part b: the mean tests again (bf16 rows laid out as fp32 rows), then the compiled 0.6B level
# (speed and the prefill and decode invariance checks).
job_meansqb() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 60 python3 -m pytest packages/bi-triton-ascend/tests/test_mean.py -q \
    -p no:cacheprovider -rs --junitxml="$JOB_DIR/bi_triton_mean_lanes_cuda.junit.xml"
  lowered_tests meansq_lanes 150 -k "routed or eagerly"
  timeout 360 python3 benchmarks/model_decoder.py --shapes 0.6b --compile compile --rounds 2 \
    --out "$JOB_DIR/model_decoder_0.6b_compile_meansq.json"
}

# #4: the compiled level with the modes taking turns repetition by repetition (each mode its
# own compiled wrapper): the 0.6B decode rows moved 0.71-1.37 between runs with host transients.
job_compileab06() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 500 python3 benchmarks/model_decoder.py --shapes 0.6b --compile compile --interleave \
    --rounds 2 --reps 8 --out "$JOB_DIR/model_decoder_0.6b_compile_interleaved.json"
}
job_compileab8() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 500 python3 benchmarks/model_decoder.py --shapes 8b --compile compile --interleave \
    --rounds 2 --reps 8 --out "$JOB_DIR/model_decoder_8b_compile_interleaved.json"
}

# #4: the row-op table again after the mean kernel's row tiles (mean at 4096 must stay at or
# above torch.mean), with mean_of_squares against the pattern it replaces.
job_rowsmeansq() {
  OUT=$JOB_DIR timeout 400 python3 packages/bi-triton-ascend/bench/bench_rows.py
}

# After the mean kernel's change: bi-triton-ascend's whole test suite and ir-dispatch's lowering
# tests on CUDA.
job_suitemeansq() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 420 python3 -m pytest packages/bi-triton-ascend/tests -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_suite_cuda.junit.xml"
  lowering_pass_tests meansq 80
}

# The CUDA test files that run the mean kernel through models, compiled graphs and the host-cost
# bench (the whole-suite run was cut by its limit before them).
job_meantouch() {
  unset IR_DISPATCH_LOWER IR_DISPATCH_LOWER_REDUCTIONS
  timeout 500 python3 -m pytest packages/bi-triton-ascend/tests/test_cuda.py \
    packages/bi-triton-ascend/tests/test_lowered.py packages/bi-triton-ascend/tests/test_compile.py \
    packages/bi-triton-ascend/tests/test_host_cost_bench.py \
    packages/bi-triton-ascend/tests/test_providers.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/bi_triton_mean_users_cuda.junit.xml"
}

# #12, #13: TMA loads of the attention's key/value tiles: job `attntma` on branch
# wip/attn-kv-tma (the kernel path and tune_attention.py's --block/--pointer-loads live there).

# #12: the combine kernel holding each row's max and sum per element (no layout move per fold),
# timed against main's (carry .bench-old: main's _kernels.py) on the split decode cases, twice;
# then its head columns and warps per program, bitwise checked; then the CUDA attention suite.
# The kernel change is on branch wip/attn-combine-rows (slower; main keeps the row vectors).
job_combinerows() {
  attention_before_after _kernels.py decode1x32k,decode1x32k@40k,decode8x8k
  OUT=$JOB_DIR/sweep python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 25 \
    --combine-sweep --cases decode1x32k,decode1x32k@40k,decode8x8k
  timeout 200 python3 -m pytest packages/bi-triton-ascend/tests/attention/test_attn_cuda.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/attention_combine_rows_cuda.junit.xml"
}

# vLLM. #13: the rollout's speed as users see it: default vLLM against the plugin with the kit
# attention (VLLM_BI_ATTENTION=1, the rollout side of the RL check), the RL check's width (0.6B),
# decode-heavy (256 prompts x 256 tokens, 256 generated) and single-stream, one engine per mode.
job_rollout06() {
  local bench=(python3 benchmarks/vllm_serving.py --shape 0.6b --loads decode-heavy,single-stream
    --model-dir /tmp/models-roll --timeout 240 --out "$JOB_DIR/vllm_rollout_0.6b.json")
  "${bench[@]}" --modes default
  VLLM_BI_ATTENTION=1 "${bench[@]}" --modes plugin --variant attention
}

# #13: the rollout's decode (batch 256 at 512 keys; Qwen3-0.6B and 8B heads) beside the older
# decode cases. Tiles that keep the chain: the launcher's (64 rows, 4 warps, 2 stages), one stage
# (48 KiB of shared memory: 4 programs per SM by shared memory), and register caps (maxnreg: 168
# fits 3 programs per SM, 128 fits 4; the launcher's tiles take 254 registers, 2 programs), FA3
# beside when vLLM is staged. Then the bounded sequence search (_find_seq) against main's
# (carry .bench-old: main's _kernels.py), twice.
job_decode256() {
  OUT=$JOB_DIR/tiles python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 25 \
    --cases decode256x512,decode256x512g4,decode64x1k,decode8x8k \
    --tiles 64x4x2,64x4x1,64x4x1r168,64x4x1r128,64x4x2r168,64x4x3p,128x8x1r128
  attention_before_after _kernels.py decode256x512,decode256x512g4,decode64x1k
}

# #13: Nsight Compute on the rollout's decode (batch 256 at 512 keys, 0.6B heads): the
# launcher's tiles and one stage capped at 168 registers (occupancy, stalls, DRAM throughput).
job_ncudecode256() {
  local tiles
  for tiles in 64x4x2 64x4x1r168; do
    echo "==== $tiles"
    ncu --clock-control none --launch-skip 10 --launch-count 1 -k regex:_attn_kernel \
      --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
      --section SchedulerStats --section Occupancy --section LaunchStats \
      python3 packages/bi-triton-ascend/bench/tune_attention.py --rep 1 --cases decode256x512 \
      --tiles "$tiles"
  done > "$JOB_DIR/ncu_attention_decode256.txt" 2>&1
  grep -E "====|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occ|Local Memory|No Eligible" \
    "$JOB_DIR/ncu_attention_decode256.txt"
}

# vLLM. #13: the rollout's decode-heavy load (256 prompts x 256 tokens, 256 generated, 0.6B):
# default vLLM, the plugin with the kit attention as committed, and the same with the decode
# tiles of .bench-variants/$ROLLOUT_VARIANT/config.py (carried; a copy of the tree in /tmp),
# engines in the order A B C C B A so that drift along the run cancels (ROLLOUT_ROUNDS="1" or "2"
# runs one half: one device call each).
job_rolloutvar() {
  local variant=${ROLLOUT_VARIANT:?set ROLLOUT_VARIANT} tree=/tmp/variant-tree
  rm -rf "$tree" && mkdir -p "$tree" && cp -r packages benchmarks "$tree"/
  cp ".bench-variants/$variant/config.py" \
    "$tree/packages/bi-triton-ascend/src/bi_triton_ascend/attention/config.py" || return 1
  local src_variant src_main
  src_variant=$(ls -d "$tree"/packages/*/src | tr '\n' ':')
  src_main=$(ls -d "$PWD"/packages/*/src | tr '\n' ':')
  local args=(--shape 0.6b --loads decode-heavy --model-dir /tmp/models-roll --timeout 200)
  local round
  for round in ${ROLLOUT_ROUNDS:-1 2}; do
    local order=(default main "$variant")
    [ "$round" = 2 ] && order=("$variant" main default)
    for who in "${order[@]}"; do
      case $who in
      default) python3 benchmarks/vllm_serving.py "${args[@]}" --modes default \
                 --out "$JOB_DIR/rollout_default_r$round.json" ;;
      main) VLLM_BI_ATTENTION=1 python3 benchmarks/vllm_serving.py "${args[@]}" --modes plugin \
              --variant attention --out "$JOB_DIR/rollout_main_r$round.json" ;;
      *) (cd "$tree" && VLLM_BI_ATTENTION=1 PYTHONPATH="$src_variant${PYTHONPATH#"$src_main"}" \
            python3 benchmarks/vllm_serving.py "${args[@]}" --modes plugin \
            --variant "attention-$variant" --out "$JOB_DIR/rollout_${variant}_r$round.json") ;;
      esac
    done
  done
}

# #12, #13: the split launch's partials stored chunk-major (the split kernel no longer spills on
# sm90): the attention CUDA suite with CUDA graphs, then the split decode cases timed against
# the previous layout (carry .bench-old: the previous commit's _kernels.py and _launch.py), twice.
job_splitlayout() {
  timeout 330 python3 -m pytest packages/bi-triton-ascend/tests/attention/test_attn_cuda.py \
    packages/bi-triton-ascend/tests/attention/test_attn_graphs.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/attention_split_chunk_major_cuda.junit.xml"
  attention_before_after _kernels.py,_launch.py decode1x32k,decode1x32k@40k,decode8x8k,decode64x1k \
    64x4x1
}

# #12: what job splitlayout's 330 s pytest limit cut on a fresh machine (twenty-second session):
# the CUDA-graph attention tests and the tile family's same-bits check, on the chunk-major split.
job_attngraphs() {
  timeout 520 python3 -m pytest packages/bi-triton-ascend/tests/attention/test_attn_graphs.py \
    "packages/bi-triton-ascend/tests/attention/test_attn_cuda.py::test_tile_family_gives_the_same_bits" \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/attention_graphs_tile_family_cuda.junit.xml"
}

# vLLM. #12: the kit attention's needle at the lengths (8k-32k; the smoke's default is
# 6000): cold, prefix cached, chunked prefill; alone vs batches 2-33, bitwise. At 32k, decode
# alone and in the smaller batches takes the split path, in a batch of 33 the fused one.
job_needle32k() {
  python3 tests-integration/gpu/attn_backend_smoke.py --needle-len 32000 --no-timing \
    --budget 520 --out "$JOB_DIR/attn_backend_smoke_32k.json"
}
job_needle8k() {
  python3 tests-integration/gpu/attn_backend_smoke.py --needle-len 8000 --budget 520 \
    --out "$JOB_DIR/attn_backend_smoke_8k.json"
}

# #13's benchmark in one GPU run, first half (no vLLM needed; run it beside a staging call):
# the trainer's fwd + bwd, bi-train against plain transformers.
job_rl13trainer() {
  python3 packages/bi-train/bench/bench_trainer.py --out "$JOB_DIR/bench_trainer.json"
}

# #13's benchmark, second half (vLLM staged, same machine as rl13trainer): the rollout's
# decode-heavy and single-stream loads, default against the plugin with the kit attention,
# engines A B B A, five repetitions each (the twenty-second session's three per engine spread by
# up to 35% on decode-heavy: 0.903 against 1.07 a session before). Join both halves here with
#   python benchmarks/rl_benchmark.py --trainer bench_trainer.json --rollout vllm_rollout.json \
#     --out benchmarks/results/rl_benchmark_h100.json
job_rl13rollout() {
  VLLM_BI_ATTENTION=1 python3 benchmarks/vllm_serving.py --shape 0.6b \
    --loads decode-heavy,single-stream --modes default,plugin --rounds 2 --reps 5 \
    --model-dir /tmp/models-roll --timeout 200 --out "$JOB_DIR/vllm_rollout.json"
}

# vLLM. #13: a second rollout run beside rl13rollout on another GPU of the same machine (its own
# model folder: two jobs building one checkpoint at once would race). Pool both files with
# `vllm_serving.py --merge A B --pool --out NEW`.
job_rl13rolloutb() {
  VLLM_BI_ATTENTION=1 python3 benchmarks/vllm_serving.py --shape 0.6b \
    --loads decode-heavy,single-stream --modes default,plugin --rounds 2 --reps 5 \
    --model-dir /tmp/models-rollb --timeout 200 --out "$JOB_DIR/vllm_rollout.json"
}

# #12 on a new device: the whole CUDA attention file (test_attn_cuda.py) alone, which the
# twenty-second session's 330 s limit cut on an H100; attngraphs covers the graph tests.
job_attnsuite() {
  timeout 520 python3 -m pytest packages/bi-triton-ascend/tests/attention/test_attn_cuda.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/attention_cuda.junit.xml"
}

# vLLM. #12: decode at long context, single request and batch of 8 with the prefills cancelled
# out (long-batch8-decode), default vLLM against the plugin with the kit attention, d p p d.
job_longdec() {
  VLLM_BI_ATTENTION=1 python3 benchmarks/vllm_serving.py --shape 8b \
    --loads long-single,long-batch8-decode --modes default,plugin --rounds 2 \
    --model-dir /tmp/models-longdec --timeout 240 --out "$JOB_DIR/vllm_long_decode.json"
}

# vLLM. #12: the prefill-dominated batch of 8 (generated tokens/s, prefill included) in the three
# modes the issue names, one engine each: default, vLLM's own batch-invariant mode, the plugin
# with the kit attention.
job_longbatch() {
  VLLM_BI_ATTENTION=1 python3 benchmarks/vllm_serving.py --shape 8b --loads long-batch8 \
    --modes default,vllm-bi,plugin --model-dir /tmp/models-longbatch --timeout 240 \
    --out "$JOB_DIR/vllm_long_batch8.json"
}

# On a new device: bi-triton-ascend's CUDA tests but the attention's (attnsuite, attngraphs), and
# ir-dispatch's CUDA tests.
job_kernelsuite() {
  timeout 400 python3 -m pytest packages/bi-triton-ascend/tests -q -p no:cacheprovider -rs \
    --ignore=packages/bi-triton-ascend/tests/attention \
    --junitxml="$JOB_DIR/bi_triton_kernels_cuda.junit.xml"
  timeout 110 python3 -m pytest packages/ir-dispatch/tests/test_cuda.py -q -p no:cacheprovider -rs \
    --junitxml="$JOB_DIR/ir_dispatch_cuda.junit.xml"
}

# #12, #13: the Gluon split decode and prefill against the Triton launches, bit for bit, on lengths
# around tiles and chunks (test_attn_gluon_cuda.py); then the split decode
# (bench/gluon_split_decode.py; compiled for sm90 here, never run) timed, three and two stages. Then the Triton split
# kernel's own three-stage pipeline (115 KB of shared memory, 240 registers: two programs per SM,
# compile-only) against the launcher's tiles on the same cases.
job_gluonsplit() {
  timeout 120 python3 -m pytest packages/bi-triton-ascend/tests/attention/test_attn_gluon_cuda.py \
    -q -p no:cacheprovider -rs --junitxml="$JOB_DIR/attn_gluon_cuda.junit.xml"
  OUT=$JOB_DIR timeout 150 python3 packages/bi-triton-ascend/bench/gluon_split_decode.py --stages 3
  mv "$JOB_DIR/gluon_split_decode.json" "$JOB_DIR/gluon_split_decode_s3.json"
  OUT=$JOB_DIR timeout 100 python3 packages/bi-triton-ascend/bench/gluon_split_decode.py --stages 2
  (cd packages/bi-triton-ascend && OUT=$JOB_DIR timeout 140 python3 bench/tune_attention.py \
    --rep 100 --cases decode1x32k@40k,decode8x8k,decode8x32k@40k --tiles 64x4x1,64x4x3p,64x4x3pr168)
}

# #12: the Gluon fused prefill (bench/gluon_prefill.py; compiled for sm90 here, never run): the
# softmax under the next tile's score MMA; bits against the Triton fused launch, and time.
job_gluonprefill() {
  OUT=$JOB_DIR timeout 300 python3 packages/bi-triton-ascend/bench/gluon_prefill.py --stages 4
  mv "$JOB_DIR/gluon_prefill.json" "$JOB_DIR/gluon_prefill_s4.json"
  OUT=$JOB_DIR timeout 200 python3 packages/bi-triton-ascend/bench/gluon_prefill.py --stages 3
}
