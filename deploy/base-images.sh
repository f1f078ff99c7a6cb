#!/usr/bin/env bash
# Makes the Dockerfile's base images (debian:bookworm, debian:bookworm-slim) from Debian's archive, for a Docker with no registry.
#
#   bash deploy/base-images.sh [--docker /usr/bin/docker] [--force]
#
# mmdebstrap (run as root) installs a minbase bookworm with this machine's apt sources, and `docker import` makes it an
# image. The merged-/usr hook keeps usrmerge (and the perl it pulls in) out; the slim image is the same tree less what
# debian:bookworm-slim leaves out (documentation but the copyright files, man pages, locales, info), so one download
# makes both. This machine's apt sources and its Acquire settings (a proxy, a snapshot's validity) are copied in, so
# that the Dockerfile's apt-get reaches the archive this machine reaches, and the apt settings of Debian's own images
# (downloaded packages and caches deleted after each install). Existing images are kept (--force remakes both).
set -euo pipefail

DOCKER=/usr/bin/docker
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --docker) DOCKER="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    *) echo "base-images.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
command -v mmdebstrap >/dev/null || { echo "base-images.sh: mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "base-images.sh: run as root (mmdebstrap --mode=root)" >&2; exit 1; }

work=$(mktemp -d /tmp/sg-base-XXXXXX)
trap 'rm -rf "$work"' EXIT

# The host's apt configuration that decides where and how packages are fetched.
mkdir -p "$work/apt/sources.list.d" "$work/apt/apt.conf.d"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -s "$f" ] || continue
  case "$f" in /etc/apt/sources.list) cp "$f" "$work/apt/sources.list" ;; *) cp "$f" "$work/apt/sources.list.d/" ;; esac
done
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  case "$(basename "$f")" in docker-*) continue ;; esac
  [ -f "$f" ] && grep -q '^[[:space:]]*Acquire' "$f" && cp "$f" "$work/apt/apt.conf.d/host-$(basename "$f")"
done
# What Debian's own images set (debuerreotype): no .deb files, package caches or translations left in a layer.
cat > "$work/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$work/apt/apt.conf.d/docker-autoremove-suggests"
echo 'Acquire::GzipIndexes "true";' > "$work/apt/apt.conf.d/docker-gzip-indexes"
echo 'Acquire::Languages "none";' > "$work/apt/apt.conf.d/docker-no-languages"

# debian:bookworm-slim is the same tree less what Debian's slim images leave out, read from dpkg's own exclude file
# (written into the slim image, so that the Dockerfile's apt-get leaves the same paths out).
SLIM_CFG='path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/groff/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/linda/*
path-exclude=/usr/share/locale/*'

have() { [ "$FORCE" -eq 0 ] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
if have debian:bookworm && have debian:bookworm-slim; then
  echo "base-images.sh: debian:bookworm and debian:bookworm-slim exist"
  exit 0
fi

echo "base-images.sh: making debian:bookworm with mmdebstrap"
mmdebstrap --quiet --variant=minbase --mode=root --format=tar \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --customize-hook='rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/0000sources.list' \
  --customize-hook="sync-in $work/apt /etc/apt" \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm "$work/bookworm.tar"

# The slim tree: the full one's members filtered by SLIM_CFG's rules (dpkg's: the last matching rule wins), plus the rules.
SLIM_CFG="$SLIM_CFG" /usr/bin/python3 - "$work/bookworm.tar" "$work/slim.tar" <<'PY'
import fnmatch, io, os, sys, tarfile
rules = [l.split("=", 1) for l in os.environ["SLIM_CFG"].splitlines()]
def keep(name):
    path, out = "/" + name.lstrip("./"), True
    for kind, pat in rules:
        if fnmatch.fnmatchcase(path, pat):
            out = kind == "path-include"
    return out
with tarfile.open(sys.argv[1]) as src, tarfile.open(sys.argv[2], "w", format=tarfile.PAX_FORMAT) as dst:
    for m in src:
        if keep(m.name):
            dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    cfg = (os.environ["SLIM_CFG"] + "\n").encode()
    info = tarfile.TarInfo("./etc/dpkg/dpkg.cfg.d/docker-slim")
    info.size, info.mode = len(cfg), 0o644
    dst.addfile(info, io.BytesIO(cfg))
PY

for pair in "debian:bookworm $work/bookworm.tar" "debian:bookworm-slim $work/slim.tar"; do
  set -- $pair
  "$DOCKER" import -c 'CMD ["bash"]' "$2" "$1" >/dev/null
  echo "base-images.sh: $1 is $("$DOCKER" image inspect -f '{{.Size}}' "$1") bytes"
done
