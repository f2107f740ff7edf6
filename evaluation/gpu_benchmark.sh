#!/usr/bin/env bash
# GPU benchmark of the clip stage on the ViT-B/16 architecture, bf16, batch 256.
# Usage: bash evaluation/gpu_benchmark.sh OUT_FILE [WHEEL_DIR] [SUITE]
#   WHEEL_DIR: wheels of this package and of llamafactory, installed with --no-deps into one target folder (the
#   two merge into one llamafactory/ folder there), for GPU machines without LLaMA-Factory's dependencies or network.
#   SUITE: stage (stage vs plain loop, eager and torch.compile), methods (per-method table and the CLIP-Adapter
#   feature cache), files (the input pipeline from 4,128 generated JPEGs, 8 loader workers: decoded per item in the
#   workers, on the GPU, or once; then the compiled full finetune end to end from the files through each path against
#   the plain compiled loop from memory), or all (default).
set -euo pipefail
out="${1:-benchmark_gpu.jsonl}"
suite="${3:-all}"
if [ -n "${2:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$2"/*.whl
  export PYTHONPATH=/tmp/site
fi
export DISABLE_VERSION_CHECK=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out"
if [ "$suite" = all ] || [ "$suite" = stage ]; then
  python3 evaluation/benchmark.py --bf16 --batch_size 256 --steps 30 | tail -1 | tee -a "$out"
  python3 evaluation/benchmark.py --bf16 --batch_size 256 --steps 30 --compile | tail -1 | tee -a "$out"
fi
if [ "$suite" = all ] || [ "$suite" = methods ]; then
  python3 evaluation/benchmark.py --bf16 --batch_size 256 --adapter_cache | tail -1 | tee -a "$out"
  python3 evaluation/benchmark.py --bf16 --batch_size 256 --steps 30 \
    --methods full,bias,lora,adapter,vpt_shallow,vpt_deep | tail -1 | tee -a "$out"
fi
if [ "$suite" = all ] || [ "$suite" = files ]; then
  # nvJPEG against the CPU path's pixels first (needs a torchcodec wheel built for the image's torch in WHEEL_DIR)
  python3 -m pytest -q -p no:cacheprovider tests/test_device_decode.py -k gpu 2>&1 | tail -3 | tee -a "$out"
  python3 evaluation/benchmark.py --from_files --workers 8 --bf16 --batch_size 256 --steps 30 --compile \
    | tail -1 | tee -a "$out"
fi
