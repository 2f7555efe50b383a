#!/usr/bin/env bash
# Installs the Debian packages sluice builds and tests against (`make deps`).
set -euo pipefail
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config make \
    libhdf5-dev hdf5-tools \
    libopenmpi-dev openmpi-bin \
    libjansson-dev libcunit1-dev libpcre2-dev libutf8proc-dev \
    munge slurmctld slurmd slurm-client libpmix-dev \
    clang libclang-rt-dev \
    >/dev/null
echo "deps: installed"
