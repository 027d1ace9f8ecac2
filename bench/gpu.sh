#!/usr/bin/env bash
# The GPU benchmark: ours against Trainer + peft LoRA on one GPU, as one script (about 5-8 minutes on an
# H200-class GPU, start-up included).
#
#   bash bench/gpu.sh [OUT_DIR]            # on the GPU machine, from the repository root
#
# Needs torch (CUDA), transformers, peft, accelerate, hydra-core, omegaconf and datasets. On a machine
# without network access, put the missing ones as wheels in .whl/ (the download command is printed below
# when something is missing); they are installed into a temporary folder for this run only. Measures, for
# a randomly initialised TinyLlama-1.1B-shaped Llama in bf16 with LoRA: training tokens/s, MFU (formula in
# bench/studies/gpu_benchmark.py) and peak memory at 4k, 16k and 32k tokens, ours against Trainer + peft,
# and that RoPE angles stay float32 under bf16. Writes OUT_DIR/gpu.json and OUT_DIR/gpu.log (default
# results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-results/gpu}"
mkdir -p "$out"
python=${PYTHON:-python3}

if compgen -G ".whl/*.whl" > /dev/null; then
    site="$(mktemp -d)"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

missing=$("$python" - <<'PY'
import importlib.util
need = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
        "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
        "datasets": "datasets", "pyarrow": "pyarrow", "psutil": "psutil", "safetensors": "safetensors"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
    echo "bench/gpu.sh: missing Python packages: $missing" >&2
    echo "carry them as wheels: python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\" >&2
    echo "  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $missing (and their own missing needs)" >&2
    exit 2
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$python" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
    "$python" -m bench.studies.gpu_benchmark --shape 1b --lengths 4096 16384 32768 --steps 4 --out "$out/gpu.json"
} 2>&1 | tee "$out/gpu.log"
