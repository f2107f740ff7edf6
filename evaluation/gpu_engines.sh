#!/usr/bin/env bash
# The distributed engines on a GPU machine, as users launch them (prepared for issue #19; no GPU has run it yet):
# image_to_text on the tiny checkpoint with global negatives, plain and with cached micro-batches, under DDP, FSDP
# and DeepSpeed ZeRO-2/3, each through `llamafactory-cli train` with FORCE_TORCHRUN. DeepSpeed must be installed
# (the Docker image's build option); cached micro-batches are refused under DeepSpeed by design.
# Usage: bash evaluation/gpu_engines.sh OUT_DIR [NPROC]
set -uo pipefail
out="${1:-engines}"
nproc="${2:-$(nvidia-smi -L | wc -l)}"
mkdir -p "$out"
cat > "$out/ds_z2.json" <<'JSON'
{"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
 "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}}
JSON
cat > "$out/ds_z3.json" <<'JSON'
{"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
 "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": true}}
JSON
common=(examples/clip/i2t_full.yaml model_name_or_path=data/models/tiny-clip dataset_dir=data image_size=32
  max_steps=20 per_device_train_batch_size=8 per_device_eval_batch_size=64 bf16=true dataloader_num_workers=2
  overwrite_output_dir=true save_strategy=no plot_loss=false)
run() {
  local name="$1"; shift
  if FORCE_TORCHRUN=1 NPROC_PER_NODE="$nproc" llamafactory-cli train "${common[@]}" output_dir="$out/$name" "$@" \
      > "$out/$name.log" 2>&1; then
    echo "$name: ok $(python3 -c "import json; r = json.load(open('$out/$name/all_results.json')); print({k: round(v, 4) for k, v in r.items() if k.startswith('eval_i2t')})")"
  else
    echo "$name: FAILED, last lines of $out/$name.log:"; tail -n 5 "$out/$name.log"
  fi
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
run ddp_global
run ddp_cached contrastive_accumulation_steps=2
run fsdp_global fsdp=full_shard
run fsdp_cached fsdp=full_shard contrastive_accumulation_steps=2
run zero2_global deepspeed="$out/ds_z2.json"
run zero3_global deepspeed="$out/ds_z3.json"
