#!/usr/bin/env bash
# Wrapper for a remote GPU host session: runs tests/gpu/session.sh with the
# given steps under a time limit (LIMIT seconds, default 540), keeping logs in
# /tmp/s, and packs them into one archive under $OUT (the device tool brings
# back only a few files).
#   usage: OUT=/path LIMIT=540 bash tests/gpu/device-run.sh STEP...
cd "$(dirname "$0")/../.."
[ -f .devdeps/activate.sh ] && . .devdeps/activate.sh
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
dest=${OUT:-build}; mkdir -p /tmp/s
pack() { tar czf "$dest/all.tgz" -C /tmp/s --exclude='*.h5' --exclude='*.csv' . 2>/dev/null; }
trap pack EXIT
OUT=/tmp/s timeout ${LIMIT:-540} bash tests/gpu/session.sh "$@"
echo "session exit $?"
