#!/bin/bash
# The container's HEALTHCHECK: GET /healthz on $SKETCHGUIDE_PORT through bash's /dev/tcp (no curl in the image); exit 0 on 200.
# Liveness, not readiness: /healthz answers while the model loads and while draining, which are not reasons to restart.
set -u
port="${SKETCHGUIDE_PORT:-8080}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t "${SKETCHGUIDE_HEALTHCHECK_TIMEOUT_S:-2}" status <&3 || exit 1
case "$status" in
  "HTTP/1."?" 200 "*) exit 0 ;;
  *) echo "healthcheck: ${status%$'\r'}" >&2; exit 1 ;;
esac
