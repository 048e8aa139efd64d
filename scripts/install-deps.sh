#!/usr/bin/env bash
# Installs what shoal needs to build, run and test on Debian 12 (bookworm). Run as root.
#
# usage: scripts/install-deps.sh [--bench] [--no-rust]
#   --bench     also install docker.io and wrk, for bench/swarm-vs-shoal.sh and bench/mesh.sh
#   --no-rust   skip the Rust toolchain check (installing prebuilt binaries)
#
# Idempotent: packages already installed are skipped, and apt-get update runs only when
# something is missing, so a second run takes a fraction of a second. Never prompts.
#
# The Rust toolchain is not installed from apt: bookworm ships rustc 1.63 and shoal needs the
# version in Cargo.toml's rust-version (1.89 or newer). Install it with rustup
# (https://rustup.rs) if the check at the end fails.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WITH_BENCH=0
CHECK_RUST=1
for arg in "$@"; do
  case "$arg" in
    --bench) WITH_BENCH=1 ;;
    --no-rust) CHECK_RUST=0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

PACKAGES=(
  # build
  build-essential pkg-config protobuf-compiler curl ca-certificates git python3
  # run: container runtime, system bus, networking
  containerd runc dbus dbus-daemon dbus-bin iproute2 nftables iptables
  containernetworking-plugins busybox-static
  # run: the init of services with init = true (/usr/bin/tini-static)
  tini
  # tests: registry for pull tests, image copying, NixOS module evaluation, systemd hosts
  docker-registry skopeo nix-bin debootstrap
  # tests: D-Bus clients that are not ours (busctl, gdbus, Python's dbus with a GLib main loop)
  systemd libglib2.0-bin python3-dbus python3-gi
)
if [[ $WITH_BENCH -eq 1 ]]; then
  PACKAGES+=(docker.io wrk)
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: run as root (it installs Debian packages)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null || [[ ! -r /etc/debian_version ]]; then
  echo "install-deps: this script supports Debian 12 (apt-get not found); install the packages by hand:" >&2
  echo "  ${PACKAGES[*]}" >&2
  exit 1
fi

installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -gt 0 ]]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  apt-get update -q </dev/null
  apt-get install "${apt_opts[@]}" --no-install-recommends "${missing[@]}" </dev/null
else
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
fi

if [[ $CHECK_RUST -eq 0 ]]; then
  exit 0
fi

# Rust: cargo from rustup's default location counts even when it is not on PATH yet.
if [[ -x $HOME/.cargo/bin/cargo ]]; then
  PATH=$HOME/.cargo/bin:$PATH
fi
need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$REPO/Cargo.toml" | head -1)
need=${need:-1.89}
if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
  cat >&2 <<EOF
install-deps: no Rust toolchain found (cargo/rustc not on PATH, not in ~/.cargo/bin).
  shoal needs Rust $need or newer; Debian 12's rustc (1.63) is too old. Install it with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
  then run this script again.
EOF
  exit 1
fi
have=$(rustc --version 2>/dev/null | awk '{print $2}' || true)
if [[ -z $have ]]; then
  echo "install-deps: rustc is on PATH but does not run (rustup without a default toolchain?); run: rustup default stable" >&2
  exit 1
fi
if [[ $(printf '%s\n%s\n' "$need" "${have%%-*}" | sort -V | head -1) != "$need" ]]; then
  echo "install-deps: rustc $have is older than $need (Cargo.toml rust-version); run: rustup update stable" >&2
  exit 1
fi
echo "install-deps: rust $have (needs >= $need): ok"
