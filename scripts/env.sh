#!/usr/bin/env bash
# Create (or reuse) the project's virtual env and install what the README commands need. Idempotent and quiet on
# a second run. Prints the env's python path as its last line.
#
# - A machine where `python3` already imports torch and triton (the GPU image: CUDA torch, no internet): the venv
#   sees the system packages (--system-site-packages) and nothing is downloaded; only this package is installed.
# - Otherwise (CPU machines, CI): torch==2.13.0 — pip finds the local CPU wheel; never let pip resolve a bare
#   `torch`, which pulls several GB of CUDA packages — then triton and the test/bench tools from PyPI.
#   TTF_TRITON_SPEC / TTF_NUMPY_SPEC pin other versions into another TTF_VENV (`make test-triton36`: the GPU
#   image's Triton 3.6, whose interpreter needs numpy < 2.4).
# - TTF_FLAVOUR=cuda (`make test-timm`, `make build-cuda`, own venv .venv-cuda): the CUDA build of torch 2.14.1
#   with torchvision 0.29.1 (local wheels, ~5.6 GB, nothing downloaded; it runs on the CPU), timm for the interop
#   tests, and the CUTLASS headers (nvidia-cutlass, --no-deps: only its headers are used) to compile the engine.
#   The engine extension is JIT-built per torch build on first use (threethings_fast.extension).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TTF_VENV:-.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch, triton" >/dev/null 2>&1; then
    echo "env: torch + triton found in $PY; creating $VENV on top of them (nothing downloaded)" >&2
    # --without-pip: ensurepip may be missing on such images; the system pip is visible through the system packages
    "$PY" -m venv --system-site-packages --without-pip "$VENV"
  else
    echo "env: creating $VENV and installing torch, triton and the tools" >&2
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
TRITON_SPEC="${TTF_TRITON_SPEC:-triton}"
NUMPY_SPEC="${TTF_NUMPY_SPEC:-numpy}"
FLAVOUR="${TTF_FLAVOUR:-cpu}"
TORCH_SPEC="torch==2.13.0"
EXTRA_SPEC=""
if [ "$FLAVOUR" = cuda ]; then
  # triton comes with the CUDA torch wheel, pinned by it
  TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
  TRITON_SPEC=""
  EXTRA_SPEC="timm==1.0.31"
fi
CUTLASS_SPEC="nvidia-cutlass==4.2.0.0"
STAMP="$VENV/.ttf-installed-$( (cat pyproject.toml setup.py scripts/env.sh; echo "$TRITON_SPEC $NUMPY_SPEC $FLAVOUR") \
  | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  TOOLS="$NUMPY_SPEC pytest pytest-benchmark hypothesis ninja matplotlib tqdm scikit-learn setuptools>=64 wheel"
  if "$VPY" -c "import torch, triton" >/dev/null 2>&1; then
    # Offline GPU image: install only tools that are missing, and never touch torch/triton.
    for mod_pkg in numpy:numpy pytest:pytest pytest_benchmark:pytest-benchmark hypothesis:hypothesis ninja:ninja \
                   matplotlib:matplotlib tqdm:tqdm sklearn:scikit-learn; do
      mod="${mod_pkg%%:*}"; pkg="${mod_pkg##*:}"
      "$VPY" -c "import $mod" >/dev/null 2>&1 || "$VPY" -m pip install -q "$pkg" >&2 \
        || echo "env: could not install $pkg (offline?); the features that need it will say so" >&2
    done
  else
    # shellcheck disable=SC2086  (the specs are lists of requirements)
    "$VPY" -m pip install -q --disable-pip-version-check $TORCH_SPEC $TRITON_SPEC $EXTRA_SPEC $TOOLS >&2
  fi
  if [ "$FLAVOUR" = cuda ] && ! "$VPY" -c "import importlib.util as u; assert u.find_spec('cutlass_library')" \
      >/dev/null 2>&1; then
    "$VPY" -m pip install -q --disable-pip-version-check --no-deps "$CUTLASS_SPEC" >&2 \
      || echo "env: could not install $CUTLASS_SPEC (offline?); set CUTLASS_DIR to a CUTLASS checkout" >&2
  fi
  # Editable install without the extension: an in-place build would be shared by every venv of this checkout
  # (each with its own torch ABI); the engine is JIT-built on first use instead, cached per torch build.
  if ! TTF_NO_EXTENSION=1 "$VPY" -m pip install -q \
      --disable-pip-version-check --no-deps --no-build-isolation -e . >&2; then
    # Offline with an old setuptools (editable installs need >= 64): put the checkout on the path instead;
    # threethings_fast/__init__.py maps triton_kernels/ in when it runs from a source checkout.
    echo "env: editable install failed; using the source checkout through a .pth file" >&2
    SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$PWD" > "$SITE/threethings_fast_checkout.pth"
  fi
  "$VPY" -c "import threethings_fast.triton_kernels" >/dev/null 2>&1 || "$VPY" -c "import threethings_fast" >&2
  rm -f "$VENV"/.ttf-installed-*
  touch "$STAMP"
fi
echo "$VPY"
