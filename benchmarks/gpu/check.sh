#!/usr/bin/env bash
# The GPU check of the suite: one call of at most 8 minutes on a lent GPU machine that has Python, torch,
# transformers and peft but no Ray, DeepSpeed or WebDataset and no network. Everything runs through the
# product's own commands:
#   1. the demo pipeline (configs/demo-ml100k.yaml, `gpu` profile, one GPU worker per stage): a local Ray
#      cluster, three `ray job submit` jobs, Ray Train + DeepSpeed (NCCL), encoders under bf16 autocast;
#      its metrics are compared with the same command's CPU run (benchmarks/gpu/reference-cpu.json);
#   2. `ptmrec stage1` + `ptmrec stage2` on Amazon Clothing (configs/amazon-clothing-gpu.yaml);
#   3. benchmarks/gpu/step.py: the real stage-2 step against the bare adapted encoder, frozen extraction
#      and the loader's decode rate, against the H100 anchors;
#   4. benchmarks/layer_cache.py at ViT-B/16 shapes, LoRA in the top 4 of 12 layers (target speedup >= 3).
#
# Prepare here:  bash benchmarks/gpu/make_carry.sh      (.gpu_carry/: wheelhouse, MiniLM, prepared data; 61 MiB)
# Run there:     the device tool, command "bash benchmarks/gpu/check.sh", carry [".gpu_carry"], timeout 540
# Results come back under $OUT: check.log, metrics-*.json, step.json, layer_cache.txt.
# Rehearse it on a CPU first (same steps, the `cpu` profile, 2 epochs, tiny benchmark shapes, .venv):
#   REHEARSAL=1 bash benchmarks/gpu/check.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
CARRY=$PWD/.gpu_carry
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }

if [ "${REHEARSAL:-0}" = 1 ]; then
    PY=.venv/bin/python PROFILE=cpu SHORT=(--set stage1.epochs=2 --set stage2.epochs=1) STEP=(--tiny)
    EPOCHS1=2 EPOCHS2=1 SLOW=8  # 2 CPU cores: a Clothing stage-2 pass takes minutes, not seconds
    LAYERS=(--encoder tiny-clip --image-size 32 --max-text-len 16 --items 64 --top-layers 1)
else
    PY=python3 PROFILE=gpu SHORT=() STEP=() EPOCHS1=40 EPOCHS2=3 SLOW=1
    LAYERS=(--encoder vit-b16 --top-layers 4 --items 1024 --items-per-step 256)
    stamp "install the carried wheelhouse"
    bash "$CARRY/wheelhouse/install.sh" /tmp/site >"$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
$PY -c "import torch, ray, deepspeed, webdataset, transformers, peft; print('torch', torch.__version__, \
'ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)" || exit 1

stamp "unpack the carried MiniLM and data"
# Unpacked outside .gpu_carry, so that what travels stays the compressed copy.
DATA=/tmp/ptmrec-data
mkdir -p "$DATA" && tar -C "$DATA" -xJf "$CARRY/data.tar.xz" || exit 1
rm -rf "$DATA/minilm" && cp -r "$CARRY/minilm" "$DATA/minilm" || exit 1
$PY -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'), 1 << 20)" \
    "$DATA/minilm/model.safetensors.xz" "$DATA/minilm/model.safetensors" && rm "$DATA/minilm/model.safetensors.xz" || exit 1

PTMREC=($PY -m ptmrec.cli)
COMMON=(--set tracking.mode=disabled --set "encoder.model=$DATA/minilm")
status=0

stamp "1. demo pipeline on the GPU"
timeout $((230 * SLOW)) "${PTMREC[@]}" pipeline --config configs/demo-ml100k.yaml "${COMMON[@]}" \
    --set ray.profile=$PROFILE --set stage1.num_workers=1 --set stage2.num_workers=1 "${SHORT[@]}" \
    --set "data.uri=file://$DATA/ml-100k" --set run.uri=file://./runs/gpu-demo || status=1
for s in stage1 stage2; do cp runs/gpu-demo/$s/metrics.json "$OUT/metrics-demo-$s.json" 2>/dev/null; done
$PY benchmarks/gpu/compare_reference.py runs/gpu-demo benchmarks/gpu/reference-cpu.json || status=1

stamp "2. Amazon Clothing: stage 1 + stage 2 on the GPU"
CLOTHING=(--config configs/amazon-clothing-gpu.yaml "${COMMON[@]}" --set "data.uri=file://$DATA/amazon-clothing"
          --set run.uri=file://./runs/gpu-clothing --set ray.profile=$PROFILE --set stage1.epochs=$EPOCHS1
          --set stage2.epochs=$EPOCHS2)
timeout $((170 * SLOW)) "${PTMREC[@]}" stage1 "${CLOTHING[@]}" || status=1
timeout $((120 * SLOW)) "${PTMREC[@]}" stage2 "${CLOTHING[@]}" || status=1
for s in stage1 stage2; do cp runs/gpu-clothing/$s/metrics.json "$OUT/metrics-clothing-$s.json" 2>/dev/null; done

stamp "3. step benchmark"
timeout $((110 * SLOW)) $PY benchmarks/gpu/step.py "${STEP[@]}" --shards "file://$CARRY/hm-sample" --loader-workers 6,12 --out "$OUT/step.json" || status=1

stamp "4. layer cache benchmark"
timeout $((60 * SLOW)) $PY benchmarks/layer_cache.py "${LAYERS[@]}" | tee "$OUT/layer_cache.txt" || status=1

stamp "done (status $status)"
exit $status
