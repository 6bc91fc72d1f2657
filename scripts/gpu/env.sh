# Source on the lent GPU machine, from the repository root: `source scripts/gpu/env.sh`.
# It has torch/triton but no registry access, so test/plot tools come as carried wheels
# (.gpu-wheels, made here by scripts/gpu/fetch_wheels.sh) and our packages run from src/.
# GPU_WHEELS names another wheel folder (a smaller one fits beside a vLLM part in one call).
set -u
GPU_PY=/tmp/gpu-py
WHEELS=${GPU_WHEELS:-.gpu-wheels}
# Each wheel once per machine, tracked by name: a later call may carry a folder with more wheels
# than the first (the first calls carry .gpu-wheels-pytest beside a vLLM part, the last one
# .gpu-wheels-min with nvidia-cutlass), and those must still be installed.
MISSING=()
for whl in "$WHEELS"/*.whl; do
  [ -e "$whl" ] && [ ! -e "$GPU_PY/.installed/${whl##*/}" ] && MISSING+=("$whl")
done
if [ ${#MISSING[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target "$GPU_PY" "${MISSING[@]}" 2>&1 \
    | grep -v WARNING || true
  mkdir -p "$GPU_PY/.installed"
  for whl in "${MISSING[@]}"; do touch "$GPU_PY/.installed/${whl##*/}"; done
fi
SRC=$(ls -d "$PWD"/packages/*/src | tr '\n' ':')
export PYTHONPATH="$SRC$GPU_PY:/tmp/vllm-site:${PYTHONPATH:-}"
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
