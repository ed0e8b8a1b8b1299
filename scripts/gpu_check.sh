#!/usr/bin/env bash
# The GPU checks in one call on an H100/H200 (no network needed, within 8 minutes): the GPU-marked tests,
# the batched vision attention on the full 3B vision tower, profile_vlm's search for the fastest node fast
# path on the 3B architecture with random weights, and bench/gpu_check.py (every figure, one JSON).
#   scripts/gpu_check.sh OUT_DIR            (device tool: `scripts/gpu_check.sh $OUT`, timeout_s 590)
# Optional wheels in .whl/ (carried with the device tool's `carry: [".whl"]`) are installed to /tmp/site
# first, e.g. torchao for the int8 figures and transformers 5.23 to match the dev environment:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl torchao==0.18.0 transformers==5.23.0
set -uo pipefail
out="${1:-gpu_check_out}"
mkdir -p "$out"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia_smi.txt"
timeout 90 "$py" -m pytest -q -p no:cacheprovider -m gpu test/test_fast_path.py 2>&1 | tail -15 | tee "$out/gpu_tests.txt"
timeout 45 "$py" bench/vision_attention.py --device cuda:0 --dtype bfloat16 --depth 32 --views 5 --repeats 10 \
  --out "$out" >/dev/null 2>"$out/vision_attention.log"
tail -2 "$out/vision_attention.log"
timeout 150 "$py" -m models.profile_vlm --config qwen2_5_vl_3b --random-weights --device cuda:0 \
  --views 5 --image-size 640x360 --num-samples 20 --search-fast-path --json \
  --save-results "$out/profile_vlm_3b.json" --write-config "$out/insertion_vla_gpu.yaml" \
  >/dev/null 2>"$out/profile_vlm_3b.log"
tail -8 "$out/profile_vlm_3b.log"
"$py" bench/gpu_check.py --out "$out/gpu_check.json" --budget-s "${GPU_CHECK_BUDGET_S:-190}" 2>"$out/gpu_check.log"
status=$?
tail -5 "$out/gpu_check.log"
exit $status
