#!/usr/bin/env bash
# Build (once) a local stand-in for the image's base (python:3.11-slim-bookworm), for `make docker-test` on a
# machine with no GPU and no container registry: Debian bookworm (debootstrap, minbase) + python3 venv on PATH,
# plus the host's CPU wheel of the pinned torch (requirements/torch.txt) in /opt/torch-wheels, if there is one.
#
#   docker/standin-base.sh [IMAGE_NAME]     (default ptuning-standin-base)
#
# Needs root, a running docker daemon, debootstrap, network to the Debian mirror and PyPI.
# Cached twice, keyed by this script + docker/standin.Dockerfile + the torch wheel (or its absence):
#   - the debootstrap root filesystem as a tarball under $PTUNING_CACHE (default /var/cache/ptuning),
#   - the finished image in the docker daemon (label ptuning.standin.key).
# A second call with the same key returns at once.
set -euo pipefail

IMAGE="${1:-ptuning-standin-base}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PTUNING_CACHE:-/var/cache/ptuning}"
SUITE="${DEBIAN_SUITE:-bookworm}"            # Python 3.11, matching the cp311 torch wheel
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# the version requirements/torch.txt pins: its one `torch==X` line
TORCH_VERSION="$(sed -n 's/^torch==\([0-9][^ #;]*\).*/\1/p' "$HERE/../requirements/torch.txt")"
WHEEL_DIR="${PTUNING_TORCH_WHEEL_DIR:-/opt/wheels}"
CA_BUNDLE="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
log() { printf '[standin-base] %s\n' "$*" >&2; }
die() { printf '[standin-base] ERROR: %s\n' "$*" >&2; exit 1; }
# debootstrap mounts proc/sys inside the target and may leave them mounted when it fails:
# unmount whatever is below the work folder (deepest first) before deleting it, never crossing mounts.
cleanup_rootfs() {
  local dir="$1" m
  [ -d "$dir" ] || return 0
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$dir"
}

[ -n "$TORCH_VERSION" ] || die "no 'torch==VERSION' line in requirements/torch.txt"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"
docker info >/dev/null 2>&1 || die "no docker daemon reachable"
[ -r "$CA_BUNDLE" ] || die "CA bundle $CA_BUNDLE not readable (set PIP_CERT)"

# The torch wheel: a local CPU build of the pinned version if there is one; without it, the image build takes
# PyPI's torch==X (the CUDA build, a few GB) unless docker-test is given another source (PTUNING_TORCH_PIP_ARGS).
shopt -s nullglob
wheels=("$WHEEL_DIR"/torch-"$TORCH_VERSION"*-cp311-*linux*x86_64.whl)
shopt -u nullglob
wheel_id="${wheels[0]:-none}"

DEB_PACKAGES="python3,python3-venv,ca-certificates"
# Bump ROOTFS_FORMAT when the way the root filesystem is made changes (invalidates the tarball cache).
ROOTFS_FORMAT=1
rootfs_key="$(printf '%s\n' "$SUITE" "$MIRROR" "$DEB_PACKAGES" "$ROOTFS_FORMAT" | sha256sum | cut -c1-16)"
key="$(printf '%s\n' "$rootfs_key" "$(sha256sum "$HERE/standin.Dockerfile" | cut -c1-64)" \
  "$(basename "$wheel_id")" "$(sha256sum "$CA_BUNDLE" | cut -c1-64)" | sha256sum | cut -c1-16)"

have="$(docker image inspect -f '{{ index .Config.Labels "ptuning.standin.key" }}' "$IMAGE" 2>/dev/null || true)"
if [ "$have" = "$key" ]; then
  log "image $IMAGE is up to date (key $key), nothing to do"
  exit 0
fi

mkdir -p "$CACHE"
tarball="$CACHE/standin-rootfs-$SUITE-$rootfs_key.tar"
rootfs_image="ptuning-standin-rootfs:$rootfs_key"
if ! docker image inspect "$rootfs_image" >/dev/null 2>&1; then
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install -y debootstrap)"
    work="$(mktemp -d /var/tmp/ptuning-standin.XXXXXX)"
    trap 'cleanup_rootfs "$work"' EXIT
    log "debootstrap $SUITE (minbase + $DEB_PACKAGES) from $MIRROR; takes about 2-3 minutes ..."
    t0=$SECONDS
    debootstrap --variant=minbase --include="$DEB_PACKAGES" \
      "$SUITE" "$work/rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
      || { tail -30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    log "debootstrap done in $((SECONDS - t0)) s; caching root filesystem as $tarball"
    tar -C "$work/rootfs" --one-file-system --numeric-owner -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    cleanup_rootfs "$work"
    trap - EXIT
  else
    log "using cached root filesystem $tarball"
  fi
  log "docker import -> $rootfs_image"
  docker import "$tarball" "$rootfs_image" >/dev/null
fi

ctx="$(mktemp -d /var/tmp/ptuning-standin-ctx.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/wheels"
cp "$HERE/standin.Dockerfile" "$ctx/Dockerfile"
cp "$CA_BUNDLE" "$ctx/host-ca-bundle.crt"
if [ -n "${wheels[0]:-}" ]; then
  log "torch wheel: ${wheels[0]}"
  cp "${wheels[0]}" "$ctx/wheels/"
else
  log "WARNING: no local torch $TORCH_VERSION cp311 wheel in $WHEEL_DIR; the image build will fetch torch==$TORCH_VERSION (may be large)"
fi
log "building $IMAGE (python venv, torch $TORCH_VERSION wheel: $(basename "$wheel_id")) ..."
docker build --network host --label "ptuning.standin.key=$key" \
  --build-arg "ROOTFS=$rootfs_image" \
  -t "$IMAGE" "$ctx" >&2
log "stand-in base $IMAGE ready (key $key)"
