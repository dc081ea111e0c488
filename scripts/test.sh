#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, lints, type-checks, runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k media`).
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

# The browser test drives Debian's Chromium (Playwright cannot download a browser here). Install
# it where we can; elsewhere the test skips and says how to install it.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Chromium for the browser test (apt-get install chromium)"
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null \
    || echo "could not install Chromium; the browser test will be skipped"
fi

export HF_HUB_OFFLINE=1            # tests build tiny checkpoints; nothing comes from a hub
export GRADIO_ANALYTICS_ENABLED=False

ruff check .
ruff format --check .
mypy  # app/ and testkit/, as configured in pyproject.toml
python -m pytest -q -rs -p no:cacheprovider "$@"
