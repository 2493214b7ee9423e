#!/usr/bin/env bash
# The test command: everything the tests need, then the suite.
#
#   bash scripts/test.sh                          the whole suite
#   bash scripts/test.sh tests/test_config.py -x  pytest arguments are passed on (a leading `--` is dropped)
#
# 1. System packages, where missing: Chromium (the report/compare tests open the pages), pkg-config, OpenCV and
#    turbojpeg (FFCV's C extension builds against them). Needs root (or password-less sudo) and apt-get; without
#    them it says what is missing and goes on (those tests then skip, or fail under CI=true).
# 2. .venv (made when absent) with visionlaunch installed editable with the dev and ffcv extras (skipped when it
#    is already installed from this checkout with them; without the FFCV libraries, the dev extra only).
# 3. A real two-node SLURM cluster on this machine (.ci/slurm_cluster.sh, which installs slurm + munge when
#    missing), stopped again when the tests end, unless one was already running (it is left alone then).
# 4. .venv/bin/python -m pytest -q [arguments].
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=${WANDB_MODE:-offline} MPLBACKEND=${MPLBACKEND:-Agg} PIP_DISABLE_PIP_VERSION_CHECK=1
[ "${1:-}" = "--" ] && shift

note() { echo "scripts/test.sh: $*" >&2; }

# How to act as root: already root, password-less sudo, or not at all.
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  SUDO=none
fi

apt_install() {  # apt_install PACKAGE...: install the Debian/Ubuntu packages, or say why not
  if [ "$SUDO" = none ]; then
    note "NOT INSTALLED (needs root or password-less sudo): $* -- run: sudo apt-get install -y --no-install-recommends $*"
  elif ! command -v apt-get >/dev/null; then
    note "NOT INSTALLED (no apt-get on this system): $* -- install the equivalent packages by hand"
  else
    note "installing $* (apt)"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
      --no-install-recommends "$@" >/dev/null
  fi
}

# 1. System packages.
command -v chromium >/dev/null || apt_install chromium
pkg-config --exists opencv4 libturbojpeg 2>/dev/null || apt_install pkg-config libopencv-dev libturbojpeg0-dev

# 2. The virtual environment and the package with its test extras.
[ -x .venv/bin/python ] || python3 -m venv .venv
if .venv/bin/python - <<'EOF' 2>/dev/null
import pathlib, sys
import ffcv, pytest, pytest_timeout, wandb  # noqa: F401  (the dev and ffcv extras)
import visionlaunch
sys.exit(0 if pathlib.Path(visionlaunch.__file__).resolve().is_relative_to(pathlib.Path("src").resolve()) else 1)
EOF
then
  note "visionlaunch and its dev and ffcv extras are installed in .venv from this checkout"
elif pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then
  .venv/bin/pip install -q -e '.[dev,ffcv]'
else
  note "FFCV's system libraries are missing: installing without the ffcv extra (the FFCV tests skip, or fail under CI=true)"
  .venv/bin/pip install -q -e '.[dev]'
fi

# 3. The local SLURM cluster (as root: it writes /etc/slurm and runs the daemons).
if sinfo -h >/dev/null 2>&1; then
  note "a SLURM cluster is already running: the SLURM tests use it"
elif [ "$SUDO" != none ]; then
  trap "$SUDO .ci/slurm_cluster.sh stop" EXIT  # however the tests end
  $SUDO .ci/slurm_cluster.sh start
else
  note "no SLURM cluster (starting one needs root: sudo .ci/slurm_cluster.sh start): the SLURM tests skip"
fi

# 4. The suite.
.venv/bin/python -m pytest -q "$@"
