#!/usr/bin/env bash
# Installs what sketchguide needs on Debian 12 (as root or through sudo) and configures the build folder `build/`.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(
  build-essential meson ninja-build pkg-config
  python3-torch python3-numpy python3-pil python3-pytest
  libtorch-dev libopenblas0-pthread
  libmicrohttpd-dev libjansson-dev libturbojpeg0-dev libpng-dev zlib1g-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ -f build/build.ninja ]; then
  meson setup --reconfigure build
else
  meson setup build
fi
