#!/usr/bin/env bash
# The attribution benchmark (bench/attribution.py) on a GPU machine, in one go: prints the same
# table as `make bench` and writes results/bench/attribution_gpu.json.
#
# Needs a Python with a CUDA build of torch, traker and the requirements of this project
# (nothing is downloaded). It uses $PYTHON if set, else .venv/bin/python, else python3.
# traker's CUDA projector (stock on a GPU) is used when the separately built `fast_jl` imports;
# without it, stock falls back to BasicProjector on the GPU and `auto` picks `factored`.
# Extra arguments go to bench/attribution.py (e.g. --n-train 8192 --batch-size 256).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'PY'
import sys
import torch
import trak
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), traker {trak.__version__}")
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: torch cannot use a GPU here (CPU-only build or no device); run `make bench` instead")
try:
    import fast_jl  # noqa: F401
    print("fast_jl: available (stock = traker's CudaProjector)")
except ImportError:
    print("fast_jl: not importable (stock = BasicProjector on the GPU; auto = factored)")
PY

exec "$PYTHON" bench/attribution.py --device cuda --threads "$(nproc)" --out results/bench/attribution_gpu.json "$@"
