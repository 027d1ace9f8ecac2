#!/usr/bin/env bash
# The GPU benchmark: the loss kernels of train.loss against each other, ours against Trainer + peft LoRA and
# TRL's SFTTrainer on one GPU, then sequence parallelism on two GPUs when there are two, as one script
# (more than 9 minutes on one H200, start-up included: the first run, whose two peers failed early, was cut
# there in its last loss case; each step's start time is logged; the sequence-parallel step adds about 5 more
# on two).
#
#   bash bench/gpu.sh [OUT_DIR] [options]  # on the GPU machine, from the repository root
#
# Options narrow the run to fit a time limit (each keeps its default when not given):
#   --lengths "4096 16384 32768"     training tokens per row
#   --systems "ours baseline trl"    ours, Trainer + peft (baseline), TRL's SFTTrainer (trl)
#   --loss-cases "2048x32000x32768 4096x128256x8192 4096x128256x8192+head"   HIDDENxVOCABxTOKENS[+head];
#                                    "" skips the loss kernels
#   --no-sp                          skip the sequence-parallel step
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
# package skips its step with a line saying which and how to add it. Then, on 2+ GPUs with deepspeed,
# extend's training at 32k tokens with accelerate.sequence_parallel_size 1 and 2 (see the step below).
# Writes OUT_DIR/gpu.json, OUT_DIR/loss_kernels.json, OUT_DIR/gpu.log and OUT_DIR/sp/ (default results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
out="results/gpu"
if (($#)) && [[ "$1" != --* ]]; then out="$1"; shift; fi
lengths="4096 16384 32768" systems="ours baseline trl" sp=1
loss_cases="2048x32000x32768 4096x128256x8192 4096x128256x8192+head"
while (($#)); do
    case "$1" in
        --lengths) lengths="${2:?--lengths needs a quoted list of token counts}"; shift 2 ;;
        --systems) systems="${2:?--systems needs a quoted list: ours baseline trl}"; shift 2 ;;
        --loss-cases) loss_cases="${2-}"; (($# >= 2)) || { echo "bench/gpu.sh: --loss-cases needs a quoted list (\"\" skips)" >&2; exit 2; }; shift 2 ;;
        --no-sp) sp=0; shift ;;
        *) echo "bench/gpu.sh: unknown option $1 (see the comment at the top of bench/gpu.sh)" >&2; exit 2 ;;
    esac
done
for n in $lengths; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench/gpu.sh: --lengths: '$n' is not a token count" >&2; exit 2; }; done
for s in $systems; do [[ "$s" =~ ^(ours|baseline|trl)$ ]] || { echo "bench/gpu.sh: --systems: '$s' is not one of ours, baseline, trl" >&2; exit 2; }; done
for c in $loss_cases; do [[ "$c" =~ ^[0-9]+x[0-9]+x[0-9]+(\+head)?$ ]] || { echo "bench/gpu.sh: --loss-cases: '$c' is not HIDDENxVOCABxTOKENS[+head]" >&2; exit 2; }; done
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
    # The loss kernels first: about 2 minutes, then the training runs (a fresh process per system and length).
    if [ -n "$loss_cases" ]; then
        date -u +"%H:%M:%S loss kernels: $loss_cases"
        # shellcheck disable=SC2086
        "$python" -m bench.studies.loss_kernels --device cuda --dtype bfloat16 --repeats 3 \
            --cases $loss_cases --out "$out/loss_kernels.json"
    fi
    date -u +"%H:%M:%S training: $systems at $lengths tokens"
    # shellcheck disable=SC2086
    "$python" -m bench.studies.gpu_benchmark --shape 1b --lengths $lengths --systems $systems --steps 4 \
        --out "$out/gpu.json"
    date -u +"%H:%M:%S done"


    # Sequence parallelism (DeepSpeed Ulysses, accelerate.sequence_parallel_size): the same 1B-shaped LoRA
    # run at 32k tokens, 2 rows per step, on 2 GPUs under ZeRO-3 through launch.sh, with each row whole on one
    # GPU (sp=1) and split over both (sp=2). Each step's log line carries tokens/s and rank 0's peak memory;
    # the logs go to OUT_DIR/sp/sp1.log and sp2.log. Needs 2 GPUs and deepspeed; on fewer GPUs sp has no
    # peer to split with, so the step says so and is skipped. A run that fails is noted and the script goes on.
    gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
    if ((!sp)); then
        echo "sequence parallelism: skipped (--no-sp)"
    elif ((gpus < 2)); then
        echo "sequence parallelism: skipped ($gpus GPU(s); sequence_parallel_size=2 needs 2)"
    elif ! "$python" -c "import deepspeed" 2>/dev/null; then
        echo "sequence parallelism: skipped (deepspeed is not installed; carry it in .whl/)"
    else
        sp_dir="$out/sp"
        mkdir -p "$sp_dir"
        "$python" -c "import sys; from pathlib import Path; from bench.lib.training_harness import save_model
save_model(Path(sys.argv[1]), 2048, 22, 32, 32000, 32768, 5632, 4)" "$sp_dir/model"
        sp_common=(model=hf "model.name_or_path=$sp_dir/model" rope=none adapter=lora data=stdlib
                   "data.output_dir=$sp_dir/data" curriculum.tokens_per_step=65536
                   "curriculum.stages=[{length: 32768, steps: 4}]" train.micro_batch_size=1 train.log_every=1
                   train.checkpoint_every=0 train.tracker=none train.gradient_checkpointing=true
                   model.dtype=bfloat16 train.mixed_precision=bf16 accelerate=zero3)
        "$python" -m data_prep "${sp_common[@]}"
        for sp in 1 2; do
            PYTHON="$python" ./launch.sh --processes 2 -- "${sp_common[@]}" "accelerate.sequence_parallel_size=$sp" \
                "output_dir=$sp_dir/run-sp$sp" > "$sp_dir/sp$sp.log" 2>&1 || echo "sp=$sp failed: see $sp_dir/sp$sp.log"
            echo "sp=$sp:"
            grep -E "^step " "$sp_dir/sp$sp.log" || tail -n 5 "$sp_dir/sp$sp.log"
        done
    fi
} 2>&1 | tee "$out/gpu.log"
