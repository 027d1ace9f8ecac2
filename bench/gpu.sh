#!/usr/bin/env bash
# The GPU benchmark: ours against Trainer + peft LoRA and TRL's SFTTrainer on one GPU, and the loss
# kernels of train.loss against each other, as one script (about 8-12 minutes on an H200-class GPU,
# start-up included).
#
#   bash bench/gpu.sh [OUT_DIR]            # on the GPU machine, from the repository root
#
# Needs torch (CUDA), transformers, peft, accelerate, hydra-core, omegaconf and datasets. On a machine
# without network access, put the missing ones as wheels in .whl/ (the download command is printed below
# when something is missing); they are installed into a temporary folder for this run only. Measures, for
# a randomly initialised TinyLlama-1.1B-shaped Llama in bf16 with LoRA: training tokens/s, MFU (formula in
# bench/studies/gpu_benchmark.py) and peak memory at 4k, 16k and 32k tokens, ours against Trainer + peft,
# and that RoPE angles stay float32 under bf16. Then, with the optional packages where they are installed
# (or carried as wheels): the TRL peer (trl) in the same table, and the loss kernels (bench/studies/
# loss_kernels.py, bf16: chunked, plain, Cut Cross-Entropy's CUDA kernel from cut-cross-entropy, Liger's fused
# linear cross-entropy from liger-kernel) at TinyLlama's and Llama-3's output layers. A missing optional
# package skips its step with a line saying which and how to add it. Writes OUT_DIR/gpu.json,
# OUT_DIR/loss_kernels.json and OUT_DIR/gpu.log (default results/gpu).
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

optional=$("$python" - <<'PY'
import importlib.util
want = {"trl": "trl", "cut_cross_entropy": "cut-cross-entropy", "liger_kernel": "liger-kernel"}
print(" ".join(pkg for mod, pkg in want.items() if importlib.util.find_spec(mod) is None))
PY
)

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    for pkg in $optional; do
        echo "bench/gpu.sh: optional package $pkg is not installed: its step is skipped (carry it as a wheel in .whl/, as above)"
    done
    "$python" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
    "$python" -m bench.studies.gpu_benchmark --shape 1b --lengths 4096 16384 32768 --steps 4 --out "$out/gpu.json"
    "$python" -m bench.studies.loss_kernels --device cuda --dtype bfloat16 --repeats 3 \
        --cases 2048x32000x4096 2048x32000x16384 2048x32000x32768 4096x128256x8192 4096x128256x8192+head \
        --out "$out/loss_kernels.json"
} 2>&1 | tee "$out/gpu.log"
