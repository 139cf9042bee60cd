#!/usr/bin/env bash
# Idempotent setup for mixc on Debian 12: system packages (LLVM 22 / MLIR 22),
# and ptxas from PyPI into the project-local tool folder `.tools/`.
# Safe to run again: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="llvm-22-dev libmlir-22-dev libpolly-22-dev libclang1-22 libclang-common-22-dev libzstd-dev mlir-22-tools clang pkg-config fonts-dejavu-core"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing system packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi

# ptxas (CUDA 12.9) from the nvidia-cuda-nvcc-cu12 wheel, into .tools/python.
PTXAS=".tools/python/nvidia/cuda_nvcc/bin/ptxas"
if [ ! -x "$PTXAS" ]; then
  echo "setup: installing ptxas (nvidia-cuda-nvcc-cu12) into .tools/"
  python3 -m pip install -q --disable-pip-version-check --target .tools/python "nvidia-cuda-nvcc-cu12==12.9.*" >/dev/null
fi
# nvdisasm and cuobjdump (CUDA 13, about 6 MB) for `mixc build --report`'s
# machine-code figures; their own folder (pip --target does not merge into
# .tools/python's nvidia/).
NVDISASM=".tools/sass/nvidia/cu13/bin/nvdisasm"
if [ ! -x "$NVDISASM" ]; then
  echo "setup: installing nvdisasm (nvidia-cuda-nvdisasm) into .tools/"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target .tools/sass "nvidia-cuda-nvdisasm==13.5.37" "nvidia-cuda-cuobjdump==13.5.37" >/dev/null
fi
# JAX on the CPU (about 100 MB), the external peer `mixc bench --vs jax` runs
# where there is no GPU (PyTorch's CUDA wheels are gigabytes); bench puts
# .tools/python on PYTHONPATH for its peers.
if ! PYTHONPATH=.tools/python python3 -c "import jax" >/dev/null 2>&1; then
  echo "setup: installing jax (CPU) into .tools/"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target .tools/python "jax[cpu]==${MIXC_JAX_VERSION:-0.4.38}" >/dev/null \
    || echo "setup: could not install jax; \`mixc bench --vs jax\` will say it is missing" >&2
fi
"$PTXAS" --version | tail -1
echo "setup: done (LLVM $(/usr/lib/llvm-22/bin/llvm-config --version), ptxas at $PTXAS)"
