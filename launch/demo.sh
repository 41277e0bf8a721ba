#!/usr/bin/env bash
# Quickstart 1: set up, then train all-RoPE, all-NoPE and SmolLM3-hybrid models on copy and
# print their accuracy by length (about 9 minutes on 2 CPU cores). Extra flags go to the sweep,
# e.g. `bash launch/demo.sh --config=configs/tiny.py --workdir=/tmp/demo`.
source "$(dirname "$0")/setup.sh"
python -m nopejax.sweep --config=configs/demo.py --workdir=runs/demo "$@"
