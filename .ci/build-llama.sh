#!/usr/bin/env bash
# Builds llama.cpp once per version and set of CPU flags, into a cache folder outside the repository,
# and reuses it after that:
#   .ci/build-llama.sh wheel    -> a llama-cpp-python wheel (for --engine llama), path printed
#   .ci/build-llama.sh server   -> llama.cpp's llama-server, from the same sources (for the server tests)
#
# The flags never depend on the building CPU: llama-cpp-python compiles with GGML_NATIVE=ON by
# default, and a build made on a CPU with AMX crashed in ggml's AMX kernels; one made on a CPU with
# AVX-512 would stop with an illegal instruction on one without. This baseline (AVX2, FMA, F16C)
# runs on every x86-64 machine of the last ten years; on other architectures GGML_NATIVE=OFF alone
# gives the generic build.
set -euo pipefail
cd "$(dirname "$0")/.."

PORTABLE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
VERSION=$(sed -n 's/^llama_cpp_python==//p' .ci/constraints.txt)
CACHE=${TOKENSTEP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenstep}
KEY=$(printf '%s %s' "$VERSION" "$PORTABLE_FLAGS" | sha256sum | cut -c1-12)
PYTHON=${PYTHON:-python3}

wheel() {
    local folder="$CACHE/llama-cpp-python/$KEY"
    local built
    built=$(ls "$folder"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$built" ]; then
        echo "Building llama-cpp-python $VERSION with portable CPU flags (once; about 6 minutes on 2 cores)..." >&2
        mkdir -p "$folder"
        # --no-cache-dir: pip's own wheel cache may hold a build made with native flags.
        CMAKE_ARGS="$PORTABLE_FLAGS" "$PYTHON" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
            -w "$folder" "llama-cpp-python==$VERSION" >&2
        built=$(ls "$folder"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)
    fi
    echo "$built"
}

server() {
    local folder="$CACHE/llama-server/$KEY"
    if [ ! -x "$folder/llama-server" ]; then
        echo "Building llama-server $VERSION with portable CPU flags (once; about 7 minutes on 2 cores)..." >&2
        local work
        work=$(mktemp -d)
        trap 'rm -rf "$work"' RETURN
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work" >&2
        tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
        # Static, no web UI (it would be downloaded), no TLS: a local test server.
        cmake -S "$work"/llama_cpp_python-*/vendor/llama.cpp -B "$work/build" -DCMAKE_BUILD_TYPE=Release $PORTABLE_FLAGS \
            -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
            -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >&2
        cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
        mkdir -p "$folder"
        cp "$work/build/bin/llama-server" "$folder/llama-server.partial"
        mv "$folder/llama-server.partial" "$folder/llama-server"  # whole, or not there
    fi
    echo "$folder/llama-server"
}

case "${1:-}" in
    wheel) wheel ;;
    server) server ;;
    *) echo "usage: $0 wheel|server" >&2; exit 2 ;;
esac
