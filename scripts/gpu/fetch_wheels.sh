#!/usr/bin/env bash
# Download (here, with registry access) the pure-Python / cp312 wheels the GPU machine lacks.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .gpu-wheels
grep -qx "/.gpu-wheels/" .git/info/exclude || echo "/.gpu-wheels/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d .gpu-wheels pytest pluggy iniconfig packaging matplotlib contourpy cycler fonttools kiwisolver \
  pyparsing python-dateutil six pillow nvidia-cutlass==4.2.0.0 pydot treelib
du -sh .gpu-wheels
