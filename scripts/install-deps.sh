#!/usr/bin/env bash
# Installs, from Debian's packages, what building and testing berth needs.
# Safe to run again: it installs only what is missing. Needs root (apt-get).
set -euo pipefail

packages=(
  protobuf-compiler   # protoc, for the gRPC API crate
  containerd          # ctr (compatibility tests) and the daemon (benchmark peer)
  runc
  etcd-server         # the shared metadata backend (store conformance tests)
  pkg-config
  gcc
  docker-registry     # offline test registry (e2e fixtures: pull/push tests)
  skopeo              # copies test images between OCI layouts, archives and the registry
  umoci               # builds the offline test images (OCI layouts)
  busybox-static      # the static binary inside the test images
  crun                # second OCI runtime for execution tests
  openssl             # makes the test CA and certificates for TLS registry tests
  criu                # checkpoint/restore (its tests skip visibly where `criu check` fails)
)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; run this script as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: no Rust toolchain: install rustup (https://rustup.rs) and Rust 1.95, then run this again" >&2
  exit 1
fi
