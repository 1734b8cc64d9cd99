#!/usr/bin/env bash
# Build the OCI image of a Bento with BentoML's own tooling, on a Linux host without a Docker engine.
#
#   scripts/build-image.sh BENTO_TAG [IMAGE_NAME]
#
# Uses `bentoml containerize --backend buildah` (chroot isolation, so the build's RUN steps share the
# host's network for apt and PyPI). Installs buildah, podman, runc and debootstrap when missing (Debian,
# as root). BentoML's Dockerfile starts FROM python:3.11-slim; when that image can be neither found
# locally nor pulled (no registry reachable), a local stand-in is made once with debootstrap. That
# stand-in is for local builds only: never push it anywhere. On a host that reaches Docker Hub the
# real python:3.11-slim is pulled and used.
set -euo pipefail

tag=${1:?usage: scripts/build-image.sh BENTO_TAG [IMAGE_NAME]}
image=${2:-$tag}
base=docker.io/library/python:3.11-slim
bentoml=${BENTOML:-bentoml}

log() { printf '[build-image] %s\n' "$*" >&2; }

ensure_tools() {
  local missing=()
  for tool in buildah podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  # Without these, podman fails here on setrlimit and on cgroups in hybrid mode.
  if [[ ! -e /etc/containers/containers.conf ]]; then
    log "writing /etc/containers/containers.conf"
    cat >/etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
  fi
}

ensure_base_image() {
  if [[ -n "$(buildah images --quiet "$base" 2>/dev/null)" ]]; then
    return
  fi
  if buildah pull --quiet "$base" >/dev/null 2>&1; then
    log "pulled $base"
    return
  fi
  log "no registry: making a local stand-in for $base with debootstrap (about a minute)"
  local rootfs
  rootfs=$(mktemp -d /var/tmp/imgedit-rootfs.XXXXXX)
  debootstrap --variant=minbase --include=python3.11,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" >/dev/null
  for name in python python3; do ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/$name"; done
  for name in pip pip3; do ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/$name"; done
  rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
  cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
  # A host behind a re-signing HTTPS proxy needs its extra certificates inside the build too.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/*
  local container mount
  container=$(buildah from scratch)
  mount=$(buildah mount "$container")
  cp -a "$rootfs"/. "$mount"/
  buildah umount "$container" >/dev/null
  buildah config \
    --env PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \
    --env LANG=C.UTF-8 \
    --env PIP_BREAK_SYSTEM_PACKAGES=1 \
    --env UV_PYTHON_DOWNLOADS=never \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    "$container"
  buildah commit --quiet --format oci "$container" "$base" >/dev/null
  buildah rm "$container" >/dev/null
  rm -rf "$rootfs"
  log "made $base (local stand-in)"
}

ensure_tools
ensure_base_image
log "containerizing $tag as $image"
BUILDAH_ISOLATION=chroot "$bentoml" containerize "$tag" --backend buildah -t "$image"
podman image inspect --format '{{.Size}}' "$image" | awk '{printf "[build-image] %s: %.2f GB\n", "'"$image"'", $1 / 1e9}' >&2
