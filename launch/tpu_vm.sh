#!/bin/bash
# Cloud TPU VM launcher: installs the package on every worker of a TPU slice and starts the
# job on all of them at once (jax.distributed auto-detects the slice topology).
#
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a launch/tpu_vm.sh \
#       --config=configs/universal.py:full --workdir=gs://my-bucket/run1
#
# The workdir should be a GCS path (Orbax writes there from every host) or a shared mount.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO=${REPO:-https://github.com/dassemble/dassemble_jax.git}
BRANCH=${BRANCH:-main}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  set -e
  if [ ! -d dassemble_jax ]; then git clone -b $BRANCH $REPO dassemble_jax; fi
  cd dassemble_jax && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -U pip && pip install -q -e . 'jax[tpu]'
  python -m dassemble_jax.main --distributed=on $ARGS
"
