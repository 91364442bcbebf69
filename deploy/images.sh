#!/usr/bin/env bash
# Build the openlines container images with podman (no Docker daemon needed).
#
#   deploy/images.sh                 base image (if missing) + nats + every service
#   deploy/images.sh router desk     only these images
#
# Public registries may be unreachable, so the base image is made locally:
# debootstrap a minimal Debian bookworm with python3 + python3-venv from the
# Debian mirror apt already uses, then `podman import` it as
# localhost/openlines-base:bookworm (skipped when it already exists).
# deploy/Dockerfile keeps its public default (BASE_IMAGE=python:3.12-slim); this
# script passes --build-arg BASE_IMAGE=<the local base> instead.
#
# Environment:
#   OPENLINES_BASE_IMAGE   base to build on (default localhost/openlines-base:bookworm;
#                          set python:3.12-slim where registries are reachable)
#   OPENLINES_IMAGE_PREFIX image names (default localhost/openlines-)  -> localhost/openlines-router
#   OPENLINES_IMAGE_TAG    tag (default latest)
#   OPENLINES_REBUILD_BASE=1  re-create the base image
#   DEBIAN_MIRROR          mirror for debootstrap (default: read from /etc/apt/sources*)
#   CONTAINERS_CONF        podman config (default: .data/containers.conf, written here)
#
#   deploy/images.sh --missing-packages   only print the Debian packages this host lacks
#                                         for podman (one a line; .ci/run installs them together
#                                         with its own, in one apt-get run)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BASE_IMAGE="${OPENLINES_BASE_IMAGE:-localhost/openlines-base:bookworm}"
PREFIX="${OPENLINES_IMAGE_PREFIX:-localhost/openlines-}"
TAG="${OPENLINES_IMAGE_TAG:-latest}"
DATA="$ROOT/.data"

say() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
# Everything podman needs on a bare Debian 12, each checked by a file test, with
# the package that provides it (why each: docs/operations.md, "Host packages").
# Listed one by one because apt may be set not to install Recommends, and
# iptables is not even a Recommends of podman - yet netavark runs it for every
# container on a bridge network ("netavark: No such file or directory").
have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]; }
helper() { [[ -x /usr/lib/podman/$1 || -x /usr/libexec/podman/$1 ]]; }
missing_packages() {
  have podman || echo podman
  have runc || echo runc                      # the runtime we use (crun fails in some sandboxes)
  have conmon || echo conmon                  # watches each container
  helper netavark || echo netavark            # container networks (bridge, compose networks)
  helper aardvark-dns || echo aardvark-dns    # name resolution on compose networks (service names, the "nats" alias)
  have iptables || echo iptables              # netavark writes its NAT and forwarding rules with it
  have slirp4netns || echo slirp4netns        # rootless podman's network
  have newuidmap || echo uidmap               # rootless podman's user namespaces
  have fuse-overlayfs || echo fuse-overlayfs  # overlay storage where the kernel's cannot be used (rootless, nested)
  if [[ "$BASE_IMAGE" == localhost/openlines-base:* ]]; then
    have debootstrap || echo debootstrap      # the local base image
  fi
}
if [[ "${1:-}" == --missing-packages ]]; then
  missing_packages
  exit 0
fi

mapfile -t need_pkgs < <(missing_packages)
if ((${#need_pkgs[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need_pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq "${need_pkgs[@]}" >&2 || die "apt-get install ${need_pkgs[*]} failed"
  else
    die "missing ${need_pkgs[*]}: install them (Debian/Ubuntu: sudo apt-get install -y ${need_pkgs[*]}) and run again"
  fi
fi
command -v podman >/dev/null 2>&1 || die "podman is not installed (apt-get install -y podman runc)"

# Debian's iptables is the nf_tables flavour; a kernel without nf_tables but
# with the legacy tables (some VMs and CI runners) needs iptables-legacy.
if [[ $(id -u) -eq 0 ]] && ! iptables -w -t nat -L -n >/dev/null 2>&1; then
  if iptables-legacy -w -t nat -L -n >/dev/null 2>&1; then
    say "iptables (nf_tables) does not work on this kernel: switching to iptables-legacy for netavark"
    update-alternatives --set iptables /usr/sbin/iptables-legacy >&2
    update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >&2
  else
    die "iptables cannot read the nat table (neither nf_tables nor legacy): netavark cannot set up container networks"
  fi
fi

# crun fails in some sandboxes (setrlimit, hybrid cgroups): use runc and cgroupfs.
mkdir -p "$DATA"
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
  export CONTAINERS_CONF="$DATA/containers.conf"
  if [[ ! -f "$CONTAINERS_CONF" ]]; then
    cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
CONF
  fi
fi
PODMAN=(podman --runtime runc)

# --- base image --------------------------------------------------------------
debian_mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [[ -z "$m" ]] && m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

build_base() {
  if [[ "$BASE_IMAGE" != localhost/openlines-base:* ]]; then
    say "using base image $BASE_IMAGE (not built here)"
    return
  fi
  if [[ "${OPENLINES_REBUILD_BASE:-0}" != 1 ]] && "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    say "base image $BASE_IMAGE present (OPENLINES_REBUILD_BASE=1 re-creates it)"
    return
  fi
  [[ $(id -u) -eq 0 ]] || die "debootstrap needs root to create $BASE_IMAGE (or set OPENLINES_BASE_IMAGE=python:3.12-slim)"
  local mirror rootfs
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d "$DATA/base-rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' RETURN
  say "debootstrap bookworm (minbase + python3, python3-venv) from $mirror - about a minute"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    >"$DATA/debootstrap.log" 2>&1 || die "debootstrap failed; see $DATA/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # Trust the CAs this host added locally (a company TLS proxy in front of PyPI, say),
  # so `pip install` inside the builds works wherever it works on the host.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    say "adding this host's local CA certificates to the base image"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >>"$DATA/debootstrap.log" 2>&1 || die "update-ca-certificates failed"
  fi
  say "importing the root filesystem as $BASE_IMAGE"
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE" >/dev/null || die "podman import failed"
}

# --- images --------------------------------------------------------------------
# Every image comes from deploy/Dockerfile: one per services/<name> (the default
# target, --build-arg SERVICE=<name>) plus the NATS node (--target nats).
DOCKERFILE=deploy/Dockerfile
known=(nats)
for f in services/*/pyproject.toml; do
  known+=("$(basename "$(dirname "$f")")")
done

targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=("${known[@]}")
fi
for t in "${targets[@]}"; do
  [[ " ${known[*]} " == *" $t "* ]] || die "unknown image '$t' (known: ${known[*]})"
done

build_base

i=0
start=$SECONDS
for t in "${targets[@]}"; do
  i=$((i + 1))
  image="${PREFIX}${t}:${TAG}"
  log="$DATA/build-$t.log"
  if [[ "$t" == nats ]]; then
    what=(--target nats)
  else
    what=(--target service --build-arg "SERVICE=$t")
  fi
  say "[$i/${#targets[@]}] $image  (${what[*]}, log $log)"
  t0=$SECONDS
  # --format docker keeps HEALTHCHECK and STOPSIGNAL (OCI image config has no HEALTHCHECK).
  if ! "${PODMAN[@]}" build --network host --format docker \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" "${what[@]}" \
      -f "$DOCKERFILE" -t "$image" . >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building $image failed; full log: $log"
  fi
  say "    done in $((SECONDS - t0)) s"
done
say "built ${#targets[@]} image(s) in $((SECONDS - start)) s"
