#!/usr/bin/env bash
# The wheels the GPU check carries to the lent machine (Python 3.12 there, PyTorch 2.11 with
# CUDA 13 and transformers 5.17 already, no registry): this app's transformers, and
# bitsandbytes for the nf4 step. Into .whl/ (ignored by git), within the 64 MiB a call carries
# with the working tree: bitsandbytes keeps only its CUDA 13 and CPU libraries (the others,
# 110 MB unpacked, are for GPUs and toolkits that machine has not got).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(python3 -c "import transformers; print(transformers.__version__)")
rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "transformers==$version" "bitsandbytes>=0.49"
python3 - <<'PY'
import re
import zipfile
from pathlib import Path

for wheel in Path(".whl").glob("bitsandbytes-*.whl"):
    kept = wheel.with_suffix(".slim")
    drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm|xpu)")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(kept, "w", zipfile.ZIP_DEFLATED) as out:
        for item in source.infolist():
            if not drop.match(item.filename):
                out.writestr(item, source.read(item))
    kept.replace(wheel)
PY
du -sh .whl && ls .whl
