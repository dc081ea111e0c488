#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the local engine on a GPU, in one run, one table.
#
# On the lent GPU machine (PyTorch there, no registry): this app's transformers and what else
# the engine needs but that machine lacks travel as wheels in .whl/ (made here by
# `bash scripts/gpu_wheels.sh`), installed into /tmp/site first. Elsewhere, with the app's
# requirements installed: `bash scripts/gpu_check.sh`. On a CPU: `bash scripts/gpu_check.sh
# --dry-run` (a tiny model, every step; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec python3 -m benchmarks.gpu_check "$@"
