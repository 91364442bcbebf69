#!/usr/bin/env bash
# Run .ci/run on a bare Debian 12: a fresh clone of this repository's main in a
# debootstrap --variant=minbase root (no python3, no make, no podman), through
# chroot. Proves that .ci/run installs everything a new machine lacks; a green
# CI on a machine where someone installed things by hand proves nothing.
#
#   sudo deploy/ci-in-fresh-debian.sh                 # reset the root, clone main, run .ci/run
#   CI_KEEP=1 sudo deploy/ci-in-fresh-debian.sh       # keep what the last run installed (faster, not bare)
#
# Environment:
#   CI_ROOT        the root (default /var/tmp/ci-root; outside the repository). The bare
#                  debootstrap result is kept as $CI_ROOT.minbase.tar and every run starts
#                  from it again, so debootstrap runs once.
#   CI_KEEP=1      start from the root as the last run left it
#   CI_BRANCH      the branch to clone (default main; only committed work is tested)
#   CI_LOG         the log (default $CI_ROOT.log)
#   DEBIAN_MIRROR  the mirror for debootstrap (default: the one this host's apt uses)
#
# The clone is /ci in the root, with a copy of ../shared beside it (/shared), as CI lays them.
#
# What the root gets besides debootstrap's minbase, i.e. what a machine of this
# workplace has before any project runs (not what .ci/run should install):
# the host's apt sources (bookworm, -updates, -security), /etc/hosts and
# /etc/resolv.conf, the host's local CA certificates
# (/usr/local/share/ca-certificates: the TLS proxy in front of PyPI) and the
# CA variables of the host's environment (PIP_CERT, SSL_CERT_FILE, ...).
# And one chroot-only thing: /usr/sbin/policy-rc.d forbids package scripts to
# start daemons (Dovecot's postinst would start a system Dovecot on the
# host's network namespace).
#
# The chroot shares the host's network namespace (ports, the podman0 bridge,
# iptables rules): on a busy host, run it when no other container tests run.
# Like any run of the container tests, it leaves net.ipv4.ip_forward=1 and
# netavark's (empty) NETAVARK chains behind.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${CI_ROOT:-/var/tmp/ci-root}"
PRISTINE="$ROOT.minbase.tar"
BRANCH="${CI_BRANCH:-main}"
LOG="${CI_LOG:-$ROOT.log}"

say() { printf '[fresh-debian] %s\n' "$*" >&2; }
die() { printf '[fresh-debian] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, mount, chroot)"
case "$ROOT" in "$REPO" | "$REPO"/*) die "CI_ROOT must be outside the repository" ;; esac

debian_mirror() {
  if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [[ -z "$m" ]] && m=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

mounted_under() { awk -v r="$ROOT/" 'index($2, r) == 1 {print $2}' /proc/mounts; }

unmount_all() {
  local p
  # what the run left running in the root (a container's conmon, a test's server) holds mounts
  for p in /proc/[0-9]*; do
    if [[ "$(readlink "$p/root" 2>/dev/null)" == "$ROOT" ]]; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
  done
  if mountpoint -q "$ROOT"; then umount -R "$ROOT" 2>/dev/null || umount -R -l "$ROOT"; fi
  [[ -z "$(mounted_under)" ]] || say "still mounted under $ROOT: $(mounted_under | tr '\n' ' ')"
}

# -- the bare root ----------------------------------------------------------------
if mountpoint -q "$ROOT" || [[ -n "$(mounted_under)" ]]; then
  die "$ROOT is mounted (a run in progress?): $(mounted_under | tr '\n' ' ')"
fi
if [[ ! -s "$PRISTINE" ]]; then
  command -v debootstrap >/dev/null 2>&1 || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2; }
  }
  rm -rf "$ROOT"
  mirror=$(debian_mirror)
  say "debootstrap --variant=minbase bookworm $ROOT $mirror (about a minute)"
  debootstrap --variant=minbase bookworm "$ROOT" "$mirror" >"$ROOT.debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $ROOT.debootstrap.log"
  # what a machine here has before any project runs (see the header)
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    rm -f "$ROOT/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$ROOT/etc/apt/sources.list.d/"
  elif [[ -s /etc/apt/sources.list ]]; then
    cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list"
  fi
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  fi
  printf '#!/bin/sh\n# chroot: package scripts start no daemons\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
  chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
  tar -C "$ROOT" -cf "$PRISTINE.tmp" . && mv "$PRISTINE.tmp" "$PRISTINE"
  say "bare root kept as $PRISTINE"
elif [[ "${CI_KEEP:-0}" != 1 ]]; then
  say "resetting $ROOT from $PRISTINE"
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  tar -C "$ROOT" -xf "$PRISTINE"
else
  say "reusing $ROOT as the last run left it (CI_KEEP=1)"
fi
cp /etc/hosts "$ROOT/etc/hosts"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

# -- the clone ----------------------------------------------------------------------
rm -rf "$ROOT/ci"
git clone -q --branch "$BRANCH" "$REPO" "$ROOT/ci"
say "cloned $BRANCH at $(git -C "$ROOT/ci" log -1 --format='%h %s' | cut -c1-100)"
# CI lays a copy of shared/ (the steering folder: conventions, the real-world corpus that
# tests read from ../shared/corpus) beside the clone, without write bits: so does this.
rm -rf "$ROOT/shared"
if [[ -d "$REPO/../shared" ]]; then
  cp -r "$REPO/../shared" "$ROOT/shared"
  chmod -R a-w "$ROOT/shared"
fi

# -- mounts (removed again on exit) ------------------------------------------------------
trap unmount_all EXIT
# The root a mount point of its own, as / is on a machine: podman's storage remounts / private
# inside its mount namespace before it unpacks a layer ("remount /, flags: 0x44000: invalid argument").
mount --bind "$ROOT" "$ROOT" && mount --make-private "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys"   # rbind: the cgroup mounts too
mount --rbind /dev "$ROOT/dev" && mount --make-rslave "$ROOT/dev"   # with /dev/pts, /dev/shm
mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"                         # a fresh /run, as after a boot

# -- .ci/run, as CI runs it -----------------------------------------------------------
envs=(HOME=/root LANG=C.UTF-8 TERM=dumb CI=true PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for v in SSL_CERT_FILE SSL_CERT_DIR PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE NODE_EXTRA_CA_CERTS PIP_DEFAULT_TIMEOUT; do
  if [[ -n "${!v:-}" ]]; then envs+=("$v=${!v}"); fi
done
say "running .ci/run in the chroot; log: $LOG"
start=$SECONDS
rc=0
chroot "$ROOT" /usr/bin/env -i "${envs[@]}" /bin/bash -lc 'cd /ci && bash .ci/run' </dev/null >"$LOG" 2>&1 || rc=$?
say ".ci/run exited $rc after $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s; the end of $LOG:"
tail -n 15 "$LOG" >&2
exit $rc
