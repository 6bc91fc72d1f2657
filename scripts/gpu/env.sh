# Source on the lent GPU machine, from the repository root: `source scripts/gpu/env.sh`.
# It has torch/triton but no registry access, so test/plot tools come as carried wheels
# (.gpu-wheels, made here by scripts/gpu/fetch_wheels.sh) and our packages run from src/.
# GPU_WHEELS names another wheel folder (a smaller one fits beside a vLLM part in one call).
set -u
GPU_PY=/tmp/gpu-py
WHEELS=${GPU_WHEELS:-.gpu-wheels}
if [ ! -d "$GPU_PY/pytest" ] && [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --target "$GPU_PY" "$WHEELS"/*.whl 2>&1 | grep -v WARNING || true
fi
SRC=$(ls -d "$PWD"/packages/*/src | tr '\n' ':')
export PYTHONPATH="$SRC$GPU_PY:/tmp/vllm-site:${PYTHONPATH:-}"
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
