#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, lints, runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k media`).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

export HF_HUB_OFFLINE=1            # tests build tiny checkpoints; nothing comes from a hub
export GRADIO_ANALYTICS_ENABLED=False

ruff check .
ruff format --check .
python -m pytest -q -p no:cacheprovider "$@"
