#!/usr/bin/env bash
# Train on Cloud TPU VM slices: create them if they do not exist, copy this checkout to every
# worker, install with the tpu extra, and run the same train command on all workers
# (jax.distributed finds its peers on TPU VMs by itself, across slices too).
#
#   bash launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE --type v5p-32 [--num_slices N] \
#       [--version v2-alpha-tpuv5] -- --config=configs/smollm3_3b.py --workdir=/mnt/gcs/run
# The workdir must be a path every worker sees (a gcsfuse or Filestore mount): checkpoints are
# written by all workers together. N > 1 slices come as one queued resource NAME (nodes
# NAME-0 .. NAME-(N-1), joined by the data-centre network) and the train command gets
# --config.mesh.dcn_data=N unless it sets a mesh.dcn_ key itself.
set -euo pipefail
NAME="" ZONE="" TYPE="" VERSION="v2-alpha-tpuv5" SLICES=1 DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --name) NAME="$2"; shift ;;
    --zone) ZONE="$2"; shift ;;
    --type) TYPE="$2"; shift ;;
    --version) VERSION="$2"; shift ;;
    --num_slices) SLICES="$2"; shift ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
for var in NAME ZONE TYPE; do
  if [ -z "${!var}" ]; then echo "tpu_vm.sh: --${var,,} is required" >&2; exit 2; fi
done
if ! [[ "$SLICES" =~ ^[1-9][0-9]*$ ]]; then
  echo "tpu_vm.sh: --num_slices: expected a positive integer, got '$SLICES'" >&2; exit 2
fi
if [ "$SLICES" -gt 1 ] && [[ " $* " != *" --config.mesh.dcn_"* ]]; then
  set -- "$@" "--config.mesh.dcn_data=$SLICES"  # the slices hold data-parallel replicas
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TRAIN="cd ~/nopejax && .venv/bin/python -m nopejax.train $(printf '%q ' "$@")"
run() {
  if [ "$DRY" = 1 ]; then printf '%s\n' "$*"; else eval "$@"; fi
}
# A queued resource is granted when there is capacity: wait for ACTIVE, stop on a dead end.
wait_active() {
  local state
  while state="$(gcloud compute tpus queued-resources describe "$NAME" --zone "$ZONE" \
      --format='value(state.state)')"; do
    case "$state" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDING|SUSPENDED) echo "tpu_vm.sh: queued resource $NAME is $state" >&2; exit 1 ;;
    esac
    sleep 60
  done
  exit 1
}
if [ "$SLICES" -gt 1 ]; then
  TPUS="queued-resources" ALL="--node=all --worker=all"
  if [ "$DRY" = 1 ]; then echo "would create: $SLICES slices of $TYPE as queued resource $NAME"; fi
  if [ "$DRY" = 1 ] || ! gcloud compute tpus queued-resources describe "$NAME" --zone "$ZONE" \
      >/dev/null 2>&1; then
    run gcloud compute tpus queued-resources create "$NAME" --zone "$ZONE" \
      --accelerator-type "$TYPE" --runtime-version "$VERSION" --node-count "$SLICES" \
      --node-prefix "$NAME"
  fi
  if [ "$DRY" = 1 ]; then echo "would wait until queued resource $NAME is ACTIVE"; else wait_active; fi
else
  TPUS="tpu-vm" ALL="--worker=all"
  if [ "$DRY" = 1 ] || ! gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
    run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
      --version "$VERSION"
  fi
fi
# The committed tree only (no venv, no runs), the same on every worker.
run git -C "$ROOT" archive --format=tar.gz -o /tmp/nopejax.tgz HEAD
run gcloud compute tpus "$TPUS" scp "$ALL" --zone "$ZONE" /tmp/nopejax.tgz "$NAME:~/"
run gcloud compute tpus "$TPUS" ssh "$NAME" --zone "$ZONE" "$ALL" --command \
  "'rm -rf ~/nopejax && mkdir ~/nopejax && tar -xzf ~/nopejax.tgz -C ~/nopejax && cd ~/nopejax && python3 -m venv .venv && .venv/bin/pip install -q -e .[tpu]'"
run gcloud compute tpus "$TPUS" ssh "$NAME" --zone "$ZONE" "$ALL" --command "'$TRAIN'"
