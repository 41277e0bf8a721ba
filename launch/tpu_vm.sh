#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create the slice if it does not exist, copy this checkout to
# every worker, install with the tpu extra, and run the same train command on all workers
# (jax.distributed finds its peers on TPU VMs by itself).
#
#   bash launch/tpu_vm.sh [--dry-run] --name NAME --zone ZONE --type v5p-32 \
#       [--version v2-alpha-tpuv5] -- --config=configs/smollm3_3b.py --workdir=/mnt/gcs/run
# The workdir must be a path every worker sees (a gcsfuse or Filestore mount): checkpoints are
# written by all workers together.
set -euo pipefail
NAME="" ZONE="" TYPE="" VERSION="v2-alpha-tpuv5" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --name) NAME="$2"; shift ;;
    --zone) ZONE="$2"; shift ;;
    --type) TYPE="$2"; shift ;;
    --version) VERSION="$2"; shift ;;
    --) shift; break ;;
    *) echo "tpu_vm.sh: unknown option $1 (train flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
for var in NAME ZONE TYPE; do
  if [ -z "${!var}" ]; then echo "tpu_vm.sh: --${var,,} is required" >&2; exit 2; fi
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TRAIN="cd ~/nopejax && .venv/bin/python -m nopejax.train $(printf '%q ' "$@")"
run() {
  if [ "$DRY" = 1 ]; then printf '%s\n' "$*"; else eval "$@"; fi
}
if [ "$DRY" = 1 ] || ! gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" >/dev/null 2>&1; then
  run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version "$VERSION"
fi
# The committed tree only (no venv, no runs), the same on every worker.
run git -C "$ROOT" archive --format=tar.gz -o /tmp/nopejax.tgz HEAD
run gcloud compute tpus tpu-vm scp --worker=all --zone "$ZONE" /tmp/nopejax.tgz "$NAME:~/"
run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command \
  "'rm -rf ~/nopejax && mkdir ~/nopejax && tar -xzf ~/nopejax.tgz -C ~/nopejax && cd ~/nopejax && python3 -m venv .venv && .venv/bin/pip install -q -e .[tpu]'"
run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "'$TRAIN'"
