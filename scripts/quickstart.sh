#!/usr/bin/env bash
# Starts the whole berth stack on the embedded metadata default: installs what it needs,
# builds release binaries, starts berthd, imports a busybox image built here (offline, from
# Debian's busybox-static) and runs a container from it that prints a line; then keeps berthd
# in the foreground (Ctrl-C stops everything).
#   root:   /var/lib/berth   state: /run/berth   socket: /run/berth/berth.sock
# Extra arguments go to berthd. BERTH_BIN_DIR=DIR uses binaries already built there.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
if [[ -n ${BERTH_BIN_DIR:-} ]]; then
  bin=$(cd "$BERTH_BIN_DIR" && pwd)
else
  cargo build --release --workspace --bins --locked
  bin=$PWD/target/release
fi
socket=${BERTH_ADDRESS:-/run/berth/berth.sock}
image=docker.io/library/busybox:quickstart

# An OCI image archive with one layer: /bin/busybox and its applets. Plain tar, gzip,
# sha256sum and JSON; fixed times and owners, so the digests are the same on every machine
# with the same busybox.
build_busybox_image() {
  local out=$1 work arch
  work=$(mktemp -d)
  mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp" "$work/rootfs/root" "$work/layout/blobs/sha256"
  cp /usr/bin/busybox "$work/rootfs/bin/busybox"
  for applet in sh echo cat ls id env sleep true false ps uname hostname date wc grep; do
    ln -s busybox "$work/rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$work/rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/rootfs/etc/group"
  chmod 1777 "$work/rootfs/tmp"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" .
  local diff_id layer layer_size config config_size manifest manifest_size
  diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  gzip -n "$work/layer.tar"
  layer=$(sha256sum "$work/layer.tar.gz" | cut -d' ' -f1)
  layer_size=$(stat -c %s "$work/layer.tar.gz")
  mv "$work/layer.tar.gz" "$work/layout/blobs/sha256/$layer"
  case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
  esac
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$diff_id" >"$work/config.json"
  config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  config_size=$(stat -c %s "$work/config.json")
  mv "$work/config.json" "$work/layout/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
  manifest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
  manifest_size=$(stat -c %s "$work/manifest.json")
  mv "$work/manifest.json" "$work/layout/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$image" >"$work/layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
  tar -C "$work/layout" -cf "$out" oci-layout index.json blobs
  rm -rf "$work"
}

"$bin/berthd" --address "$socket" "$@" &
berthd=$!
# Whatever ends this script (Ctrl-C, a failed step) stops berthd with it.
trap 'kill -TERM $berthd 2>/dev/null || true; wait $berthd 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
for _ in $(seq 300); do
  "$bin/berth" --address "$socket" version >/dev/null 2>&1 && break
  kill -0 $berthd 2>/dev/null || { echo "quickstart: berthd exited" >&2; exit 1; }
  sleep 0.1
done

archive=$(mktemp --suffix=.tar)
build_busybox_image "$archive"
ctr --address "$socket" images import "$archive" >/dev/null
rm -f "$archive"
"$bin/berth" --address "$socket" run --rm "$image" "hello-$$" echo "hello from berth"

echo "berthd is running (Ctrl-C stops it); in another shell try:"
echo "  $bin/berth --address $socket run --rm -t $image shell sh"
echo "  $bin/berth --address $socket run -d $image web sleep 3600 && $bin/berth --address $socket tasks ls"
echo "  ctr --address $socket images ls"
wait $berthd
