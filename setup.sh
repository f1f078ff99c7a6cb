#!/usr/bin/env bash
# Installs what sketchguide needs on Debian 12 (as root or through sudo) and configures the build folder `build/`.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=(
  build-essential meson ninja-build pkg-config
  python3-torch python3-numpy python3-pil python3-pytest
  libtorch-dev libopenblas0-pthread
  libmicrohttpd-dev libjansson-dev libturbojpeg0-dev libpng-dev zlib1g-dev libhiredis-dev redis-server
  python3-yaml python3-jsonschema
  chromium fonts-dejavu-core nginx
  clang libclang-rt-14-dev llvm-14
  docker.io mmdebstrap
)
# chromium: the browser test of the sketch pad (tests/web, driven by playwright-core); nginx: the load-balanced
# deployment test (tests/deploy). Neither runs as a service: the tests start their own.
# docker.io and mmdebstrap: the image suite (tests/deploy/test_image.py) builds and runs the container image with
# Debian's Docker, its base images made from Debian's archive (deploy/base-images.sh); it starts dockerd itself.
# libhiredis-dev: cluster mode's job store (server/store_redis*.c); redis-server: its tests (tests/cluster), which start
# their own on a free loopback port (the system service is not needed and may stay stopped).
# clang, its libFuzzer runtime (libclang-rt-14-dev, only recommended by clang) and llvm-14 (llvm-cov): the fuzz
# targets (tests/fuzz, docs/fuzzing.md); without them the suite `fuzz` skips its libFuzzer runs.
# node and npm for the checks of openapi.yaml (redocly, Prism), the browser test (playwright-core, axe-core) and the Kubernetes
# manifests' validation (kubernetes-models); Debian 12's nodejs 18 is enough. A node installed
# another way (NodeSource, nvm) is used as it is: Debian's npm package would conflict with it.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

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

# The JavaScript test tools at the versions of package-lock.json, into node_modules/ (again only when the lock changes).
# No install scripts: none of these packages needs one. Debian's npm 9.2 warns that @redocly wants npm >= 9.5 to
# install it (EBADENGINE); it installs and runs fine on node 18 (its node requirement, >= 18.17, is met).
if ! cmp -s package-lock.json node_modules/.setup-package-lock.json; then
  npm ci --ignore-scripts --no-audit --no-fund
  cp package-lock.json node_modules/.setup-package-lock.json
fi

if [ -f build/build.ninja ]; then
  meson setup --reconfigure build
else
  meson setup build
fi
