#!/usr/bin/env bash
# Quickstart 2: set up with the test, Hugging Face and TPU-compiler extras, then run the test suite on CPU.
NOPEJAX_EXTRAS=test,hf,tpu source "$(dirname "$0")/setup.sh"
python -m pytest -n 2 --dist loadgroup -q tests "$@"
