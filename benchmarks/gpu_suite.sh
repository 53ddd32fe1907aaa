#!/usr/bin/env bash
# The GPU figures of the README's Performance section in one go, most important
# first (a lent GPU's time is short): the GPU checks (benchmarks/gpu_checks.py:
# exported artifacts on the GPU, bf16 SSD300 against fp32), SSD300/SSD512 train steps in bf16 (fp32 for
# SSD300), the detector at batch 1/8/64, and the input pipeline with N workers.
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [NAME ...]   (from the repository root)
#
# NAMEs (default: all) pick benchmarks by the names below. Each benchmark runs under its own time limit and writes OUT_DIR/<name>.json;
# everything printed goes to OUT_DIR/suite.log as well.
set -u
out=${1:-gpu_results}
mkdir -p "$out"
log="$out/suite.log"
python=${PYTHON:-python3}

only=" ${*:2} "

run() {  # run NAME SECONDS MODULE ARGS...
  local name=$1 limit=$2 module=$3
  shift 3
  [[ "$only" == "  " || "$only" == *" $name "* ]] || return 0
  echo "== $name ($module $*)" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$python" -m "$module" "$@" 2>&1 | grep -v -E '^[IWE][0-9]{4} ' | tee -a "$log"
  echo "   ($((SECONDS - start)) s, exit ${PIPESTATUS[0]})" | tee -a "$log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
"$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$log"

bench=benchmarks
run gpu_checks 200 $bench.gpu_checks --inputs "${GPU_INPUTS:-.gpu_inputs}" \
  --output "$out/gpu_checks.json"
run train300_bf16 150 $bench.train_step --config configs/ssd300_voc.py --batch_size 64 \
  --dtypes bfloat16 --steps 30 --output "$out/train300_bf16.json"
run inference300_bf16 120 $bench.inference --architecture ssd300 --dtype bfloat16 \
  --batch_sizes 1,8,64 --repeats 20 --noreference --output "$out/inference300_bf16.json"
run train512_bf16 120 $bench.train_step --config configs/ssd512_voc.py --batch_size 32 \
  --dtypes bfloat16 --parts full --steps 30 --output "$out/train512_bf16.json"
run inference512_bf16 90 $bench.inference --architecture ssd512 --dtype bfloat16 \
  --batch_sizes 8,64 --repeats 20 --noreference --output "$out/inference512_bf16.json"
run train300_fp32 90 $bench.train_step --config configs/ssd300_voc.py --batch_size 64 \
  --dtypes float32 --parts full --steps 20 --output "$out/train300_fp32.json"
run train300_bf16_b128 90 $bench.train_step --config configs/ssd300_voc.py --batch_size 128 \
  --dtypes bfloat16 --parts full --steps 20 --output "$out/train300_bf16_b128.json"
run augment300 120 $bench.train_step --config configs/ssd300_voc.py --batch_size 64 \
  --dtypes bfloat16 --parts full,augmented,augment --steps 30 --output "$out/augment300.json"
run postprocess_stages 120 $bench.postprocess_stages --batch_sizes 8,64 --repeats 20 \
  --output "$out/postprocess_stages.json"
run input_pipeline 120 $bench.input_pipeline --sizes 300 --workers 0,8,15 --num_images 300 \
  --batches 40 --output "$out/input_pipeline.json"
