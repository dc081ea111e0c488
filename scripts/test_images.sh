#!/usr/bin/env bash
# The Docker images, built and run with podman (no Docker engine needed), checked as a user would:
#   1. stand-in base images (no registry is reachable here): Debian bookworm's Python 3.11 in a
#      venv, tagged as the python image docker/Dockerfile.cpu names; with PyPI's torch added,
#      tagged as the pytorch image docker/Dockerfile names;
#   2. both images built (the CPU one with PyPI's torch, as a build here must: PyTorch's CPU
#      index is not reachable);
#   3. the CPU image run: its health check passes, /chat answers a question with an image from
#      outside the container (gradio_client), it runs as uid 1000, the model cache is writable;
#   4. the GPU image starts its command (no GPU here: --help, and its imports);
#   5. docker/compose.yaml's app-in-front-of-vLLM service, started alone with podman-compose,
#      says in one line that the server cannot be reached.
# About 15 minutes, most of it downloading torch twice; not part of scripts/test.sh (docs/testing.md).
# Needs root, podman, runc, mmdebstrap and podman-compose (apt-get install -y podman runc
# mmdebstrap podman-compose), and the test requirements in the running Python.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
port=${PORT:-7871}
cpu_image=qwen-vl-chat:cpu
gpu_image=qwen-vl-chat:gpu
python_base=python:3.11.13-slim-bookworm
pytorch_base=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# podman as this machine runs it: runc (crun fails on its cgroups), cgroupfs, host network,
# rlimits containers may set.
cat > "$work/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$work/containers.conf"
build() { podman build --format docker --network host "$@"; }

cleanup() {
  podman rm -f qwen-test-cpu >/dev/null 2>&1 || true
  podman volume rm -f qwen-test-hf >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "stand-in base images"
if ! podman image exists "$python_base"; then
  mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
    "$work/rootfs.tar" >/dev/null
  podman import "$work/rootfs.tar" localhost/bookworm-py >/dev/null
  cp /etc/ssl/certs/ca-certificates.crt "$work/ca.crt"
  cat > "$work/Containerfile.python" <<'EOF'
FROM localhost/bookworm-py
COPY ca.crt /etc/ssl/certs/host-ca.crt
RUN python3 -m venv /usr/local && ln -sf /usr/local/bin/python3 /usr/local/bin/python
ENV PATH=/usr/local/bin:$PATH PIP_CERT=/etc/ssl/certs/host-ca.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt
EOF
  build -t "$python_base" -f "$work/Containerfile.python" "$work"
fi
if ! podman image exists "$pytorch_base"; then
  printf 'FROM %s\nRUN pip install --no-cache-dir "torch>=2.6" "torchvision>=0.21"\n' \
    "$python_base" > "$work/Containerfile.pytorch"
  build -t "$pytorch_base" -f "$work/Containerfile.pytorch" "$work"
fi

step "build the CPU image"
started=$SECONDS
build -t "$cpu_image" -f docker/Dockerfile.cpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
echo "built in $((SECONDS - started)) s; size: $(podman image inspect "$cpu_image" --format '{{.Size}}' | numfmt --to=si)"
podman image inspect "$cpu_image" --format '{{json .Config.Healthcheck}}' | grep -q CMD \
  || { echo "the image lost its HEALTHCHECK"; exit 1; }

step "run the CPU image"
podman volume create qwen-test-hf >/dev/null
podman run -d --name qwen-test-cpu -e QWEN_DEMO_SERVER_PORT="$port" \
  -v qwen-test-hf:/home/app/.cache/huggingface "$cpu_image" \
  python web_demo_mm.py --tiny-random qwen3_vl >/dev/null
for _ in $(seq 120); do
  podman healthcheck run qwen-test-cpu >/dev/null 2>&1 && break
  sleep 2
done
podman healthcheck run qwen-test-cpu && echo "healthy"
[ "$(podman exec qwen-test-cpu id -u)" = 1000 ] && echo "runs as uid 1000"
podman exec qwen-test-cpu sh -c 'touch "$HF_HOME/probe" && rm "$HF_HOME/probe"' \
  && echo "the model cache volume is writable"
python - "$port" <<'EOF'
import sys, tempfile
from gradio_client import Client, handle_file
from PIL import Image

photo = tempfile.mktemp(suffix=".jpg")
Image.new("RGB", (640, 480), "red").save(photo)
client = Client(f"http://127.0.0.1:{sys.argv[1]}/", verbose=False)
reply = client.predict({"text": "What colour?", "files": [handle_file(photo)]},
                       max_new_tokens=8, api_name="/chat")
assert isinstance(reply, str), reply
print(f"/chat answered from outside the container: {reply!r}")
EOF
podman stop qwen-test-cpu >/dev/null && echo "stopped"

step "build the GPU image (on the stand-in pytorch base)"
started=$SECONDS
build -t "$gpu_image" -f docker/Dockerfile .
echo "built in $((SECONDS - started)) s; size: $(podman image inspect "$gpu_image" --format '{{.Size}}' | numfmt --to=si)"
podman run --rm "$gpu_image" python web_demo_mm.py --help >/dev/null && echo "its command starts"
podman run --rm "$gpu_image" python -c "import torch, transformers, gradio, av" && echo "imports"

step "compose: the app in front of vLLM, without vLLM"
# podman-compose's own exit status does not follow the container's: read what the app said.
out=$(podman-compose -f docker/compose.yaml run --rm --no-deps app-vllm 2>&1 || true)
line=$(echo "$out" | grep -E "^error: " | tail -1)
echo "$line"
echo "$line" | grep -q "Cannot reach the model server at http://vllm:8000/v1" \
  || { echo "$out" | tail -20; exit 1; }
echo "$out" | grep -q "Traceback" && { echo "a traceback, not one line"; exit 1; }
echo; echo "all image checks passed"
