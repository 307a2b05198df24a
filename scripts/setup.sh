#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install pyprobtf into it.
#
# torch==2.13.0 is installed first, on its own: an unpinned torch requirement
# met by nothing installed would pull the newest release with gigabytes of CUDA
# packages. The build needs no torch (native code takes raw pointers), so the
# package is then built without isolation from the tools installed here.
#
#   VENV=.venv EXTRAS=test,viz,digits PEERS=1 bash scripts/setup.sh
# (the defaults: the tests, the zoo's figure, the digits data set, and the peer
# libraries that the integration tests compare against)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test,viz,digits}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja
# Without a GPU the CUDA kernels only need to compile (and be read for spills): sm_90 alone builds
# four times faster than the default four architectures.
if [ -z "${PYPROBTF_CUDA_ARCHITECTURES:-}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  export PYPROBTF_CUDA_ARCHITECTURES=90
fi
pip install -q --no-build-isolation -e ".[${EXTRAS}]"
if [ "${PEERS:-1}" = "1" ]; then
  # The peers of pyprobtf.integrations, pinned to the torch above by a constraint so that none of
  # them pulls another torch. k-diffusion, torchcfm and vector-quantize-pytorch pin or pull heavy
  # training stacks (torchvision, wandb, ...) they do not need for what is compared here: they are
  # installed without their requirements, next to the few they do use.
  constraints=$(mktemp)
  "$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" >"$constraints"
  pip install -q -c "$constraints" -r scripts/peers.txt
  pip install -q -c "$constraints" --no-deps k-diffusion torchcfm vector-quantize-pytorch
  rm -f "$constraints"
fi
"$VENV/bin/python" -c "import pyprobtf; print('pyprobtf', pyprobtf.__version__, 'backends:', pyprobtf.ops.available_backends())"
