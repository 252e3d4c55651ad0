#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it.
# System servers used by the integration tests (a real Prometheus, a real
# headless Chromium) come from Debian packages when apt is available; without
# them those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing system packages: ${need[*]}"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# torch==2.13.0 first: a bare `torch` requirement would pull the multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[train,dev]"
exec python3 -m pytest "$@"
