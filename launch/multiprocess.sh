#!/usr/bin/env bash
# N processes of one job on this machine, talking over 127.0.0.1 with gloo CPU collectives:
# the multi-host code path (process sharding of data, collectives, orbax coordination) on a
# laptop.
#
#   bash launch/multiprocess.sh [--dry-run] [-n N] [--port P] [--module nopejax.train] -- FLAGS...
#   bash launch/multiprocess.sh -n 2 -- --config=configs/tiny.py --workdir=/tmp/mp
set -euo pipefail
N=2 PORT=12355 MODULE=nopejax.train DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    -n) N="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    --module) MODULE="$2"; shift ;;
    --) shift; break ;;
    *) echo "multiprocess.sh: unknown option $1 (flags for the job go after --)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python}"
cmds=()
for ((i = 0; i < N; i++)); do
  cmds+=("JAX_PLATFORMS=cpu $PY -m $MODULE --coordinator_address=127.0.0.1:$PORT --num_processes=$N --process_id=$i $*")
done
if [ "$DRY" = 1 ]; then
  printf '%s\n' "${cmds[@]}"
  exit 0
fi
pids=()
for ((i = 0; i < N; i++)); do
  # Process 0 prints; the others log to files beside the job so their errors are not lost.
  if [ "$i" = 0 ]; then
    bash -c "${cmds[$i]}" &
  else
    bash -c "${cmds[$i]}" > "/tmp/nopejax_process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
