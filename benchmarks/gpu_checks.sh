#!/usr/bin/env bash
# Everything that needs a GPU, in one run: the CUDA tests, then the GPU columns of the benchmarks.
# Logs go to $LOG_DIR (default runs/gpu_checks). Expects the project importable (pip install -e ".[dev]").
# Budget: about 6-8 minutes on one H100/H200; each step has its own time limit so one slow step cannot eat the rest.
# The training rows add about 3 minutes at most (step throughput 90 s, fast-DETR budget 120 s).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 MPLBACKEND=Agg
LOG_DIR=${LOG_DIR:-runs/gpu_checks}
mkdir -p "$LOG_DIR"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    timeout "$limit" "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}

step cuda_tests 180 python -m pytest -q -k cuda -p no:cacheprovider
step fusion_speed 150 python benchmarks/fusion_speed.py --cases a b c d
step ensemble_throughput 90 python benchmarks/ensemble_throughput.py --devices cpu cuda
step detr_variants 150 python benchmarks/detr_variants.py --skip-cpu --gpu-batch 8 --gpu-size 800
step training_step 90 python benchmarks/training.py --step --step-devices cuda --step-archs small r50 \
    --gpu-batch 32 --reps 10 --train 64 --val 16 --test 16 --out "$LOG_DIR/bench_training"
# Fast-DETR vs plain DETR, 30 s of GPU training each on 2,000 rendered images, AP on 200 held-out ones.
step fast_detr_gpu 120 python benchmarks/training.py --fast --device cuda --minutes 0.5 --variants plain fast \
    --fast-batch 32 --checkpoint-every 100 --train 2000 --val 100 --test 200 --render-workers 8 \
    --threads 4 --workers 4 --resume --out "$LOG_DIR/bench_training"
