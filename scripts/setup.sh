#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment and install pyprobtf into it.
#
# torch==2.13.0 is installed first, on its own: an unpinned torch requirement
# met by nothing installed would pull the newest release with gigabytes of CUDA
# packages. The build needs no torch (native code takes raw pointers), so the
# package is then built without isolation from the tools installed here.
#
#   VENV=.venv EXTRAS=test,viz,digits bash scripts/setup.sh
# (the defaults: the tests, the zoo's figure, the digits data set)
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
pip install -q --no-build-isolation -e ".[${EXTRAS}]"
"$VENV/bin/python" -c "import pyprobtf; print('pyprobtf', pyprobtf.__version__, 'backends:', pyprobtf.ops.available_backends())"
