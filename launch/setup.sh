#!/usr/bin/env bash
# Sets SparseRing up on a fresh Debian 12 (or Ubuntu) machine and builds it:
#   1. Debian packages: compiler, CMake, Ninja, ccache, Open MPI, protobuf, GoogleTest, Python venv,
#      clang-format and shellcheck (the style gate)
#   2. LibTorch from PyPI (torch==2.11.0) in the project's virtual environment .venv/, and the
#      Hugging Face tokenizers package (tokenizers==0.23.3) for launch/prepare_data.py, and
#      matplotlib (matplotlib==3.11.2) for the plots of launch/sweep_summary.py
#   3. configure and build into build/ (CUDA kernels too when nvcc is on the PATH)
# Idempotent: what is already there is kept. Prints each step; fails with a message naming what
# could not be installed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch_version=2.11.0
tokenizers_version=0.23.3
matplotlib_version=3.11.2
transformers_version=5.23.0
build_dir=${SPARSERING_BUILD_DIR:-$root/build}

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || fail "not root and no sudo: install the packages listed in launch/setup.sh by hand"
  sudo_cmd=(sudo)
fi

# clang-format and shellcheck: the style gate (launch/style_check.sh), part of the tests.
packages=(g++ cmake ninja-build ccache pkg-config libopenmpi-dev openmpi-bin libprotobuf-dev
          protobuf-compiler libgtest-dev clang-format shellcheck)
# A python3 that is not Debian's (pyenv, say) may already provide venv and pip.
python3 -m venv --help >/dev/null 2>&1 || packages+=(python3 python3-venv python3-pip)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq || fail "apt-get update failed: check the network and /etc/apt/sources.list"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" \
    || fail "apt-get could not install: ${missing[*]} (check the Debian package registry)"
else
  step "Debian packages already installed"
fi

if [ ! -x "$root/.venv/bin/python3" ]; then
  step "creating the virtual environment $root/.venv"
  python3 -m venv "$root/.venv" || fail "python3 -m venv failed: install python3-venv"
fi
# ensure_package MODULE PACKAGE VERSION PURPOSE: pip-installs PACKAGE==VERSION into .venv unless
# MODULE already reports that version.
ensure_package() {
  local module=$1 package=$2 version=$3 purpose=$4 installed
  installed=$("$root/.venv/bin/python3" -c "import $module; print($module.__version__.split('+')[0])" \
    2>/dev/null || true)
  if [ "$installed" = "$version" ]; then
    step "$package $version already in .venv"
    return
  fi
  step "installing $package==$version ($purpose) from PyPI into .venv"
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version" \
    || fail "pip could not install $package==$version: check access to PyPI"
}
ensure_package torch torch "$torch_version" "LibTorch for C++"
ensure_package tokenizers tokenizers "$tokenizers_version" "launch/prepare_data.py"
ensure_package matplotlib matplotlib "$matplotlib_version" "launch/sweep_summary.py plots"
ensure_package transformers transformers "$transformers_version" "tests/e2e/hf_*.py"

step "configuring $build_dir"
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSPARSERING_PYTHON="$root/.venv/bin/python3" >"$root/.setup-cmake.log" 2>&1 \
  || { cat "$root/.setup-cmake.log" >&2; fail "cmake configure failed (log above)"; }
step "building with $(nproc) jobs"
cmake --build "$build_dir" -j "$(nproc)"
step "done: $build_dir/sparsering; run launch/train.sh configs/tiny.pbtxt"
