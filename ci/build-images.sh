#!/usr/bin/env bash
# ci/build-images.sh — build the project's container images from binaries compiled on this host.
#
#   imds-conformance/mock-imds:<version>    FROM scratch + statically linked mock-imds
#   imds-conformance/imds-proxy:<version>   FROM scratch + statically linked imds-proxy + the host's iptables
#                                           (nft), conntrack and ip tools with their libraries
#   imds-conformance/imds-probe:<version>   FROM scratch + statically linked imds-probe (crate probe/: the conformance probe
#                                           the kind backend runs inside test pods)
#   imds-conformance/mock-arm:<version>     FROM scratch + statically linked mock-arm (ARM's VM/VMSS identity surface)
#
# No base image is pulled (there is none: FROM scratch). The binaries are linked statically against glibc
# (`-C target-feature=+crt-static` on the gnu target; musl is not installable here) and checked with `file`
# and `ldd` before packaging. Each image is also saved as a tarball under $IMAGES_OUT (default
# target/images) so that `kind load image-archive` or `docker load` can use it elsewhere.
#
# Needs a Docker engine. If none answers, this script starts one with ci/dockerd.sh and stops it at the end
# (the images then survive only as the tarballs). With an engine already answering, the images stay in it.
#
# usage: ci/build-images.sh [--skip-build] [--version V]
#   --skip-build   package the binaries already in $CARGO_TARGET_DIR (default target)/x86_64-unknown-linux-gnu/release
#   --version V    image tag and org.opencontainers.image.version (default: the workspace version)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { printf 'ci/build-images.sh: %s\n' "$*" >&2; }

skip_build=""
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-build) skip_build=1 ;;
    --version) version="${2:?--version needs a value}"; shift ;;
    *) log "unknown argument $1"; exit 2 ;;
  esac
  shift
done

triple=x86_64-unknown-linux-gnu
target_dir="${CARGO_TARGET_DIR:-$root/target}"
bin_dir="$target_dir/$triple/release"
out_dir="${IMAGES_OUT:-$root/target/images}"
[ -n "$version" ] || version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
[ -n "$version" ] || { log "cannot read the workspace version from Cargo.toml"; exit 2; }
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
source_url="$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
start_s=$SECONDS

if [ -z "$skip_build" ]; then
  log "building static release binaries (mock-imds, imds-proxy, imds-probe, mock-arm) for $triple"
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$triple" -p mock-imds -p imds-proxy -p imds-probe -p mock-arm
fi

for b in mock-imds imds-proxy imds-probe mock-arm; do
  f="$bin_dir/$b"
  [ -x "$f" ] || { log "missing $f (run without --skip-build)"; exit 2; }
  desc="$(file -b "$f")"
  case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) log "$f is not statically linked: $desc"; exit 1 ;;
  esac
  # ldd exits non-zero for a static binary; its message is what we check.
  lddout="$(ldd "$f" 2>&1 || true)"
  case "$lddout" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) log "$f has dynamic dependencies: $lddout"; exit 1 ;;
  esac
  log "$b: static ($(du -h "$f" | cut -f1))"
done

# --- engine ------------------------------------------------------------------------------------------------
started_engine=""
cleanup() {
  [ -n "${stage:-}" ] && rm -rf "$stage"
  if [ -n "$started_engine" ]; then ci/dockerd.sh stop || true; fi
}
trap cleanup EXIT
if ! timeout 10 docker info >/dev/null 2>&1; then
  log "no Docker engine answers: starting one with ci/dockerd.sh (stopped again at the end)"
  eval "$(ci/dockerd.sh start)"
  started_engine=1
fi

stage="$(mktemp -d /tmp/imds-images.XXXXXX)"

# Copy a file into the root filesystem directory under the same absolute path, as a regular file (symlinks
# followed: with merged /usr, /lib and /bin are symlinks on the host, and the image needs only the paths the
# loader and PATH ask for).
copy_file() { # rootfs src [dest]
  local rootfs="$1" src="$2" dest="${3:-$2}"
  mkdir -p "$rootfs$(dirname "$dest")"
  cp -L "$src" "$rootfs$dest"
}

# Copy the shared libraries a program loads (ldd closure, incl. the ELF interpreter) into rootfs.
copy_libs() { # rootfs file...
  local rootfs="$1"; shift
  local f lib
  for f in "$@"; do
    for lib in $(ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do
      [ -e "$rootfs$lib" ] || copy_file "$rootfs" "$lib"
    done
  done
}

build_image() { # name dockerfile context
  local name="$1" dockerfile="$2" context="$3"
  local tag="imds-conformance/$name:$version"
  log "docker build $tag"
  # The legacy builder is used on purpose where buildx is absent (Debian's docker.io has none); both handle
  # FROM scratch without contacting a registry.
  DOCKER_BUILDKIT=0 docker build --quiet \
    --file "$dockerfile" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url" \
    --tag "$tag" "$context" >/dev/null
  mkdir -p "$out_dir"
  docker save --output "$out_dir/$name-$version.tar" "$tag"
  log "built $tag ($(docker image inspect --format '{{.Size}}' "$tag") bytes), saved $out_dir/$name-$version.tar"
}

# mock-imds
# rootfs/ must not be empty: the classic builder fails ("layer does not exist") on an empty first layer of a
# FROM scratch image. A world-writable /tmp is the one directory the mock could want anyway.
mkdir -p "$stage/mock-imds/rootfs/tmp"
chmod 1777 "$stage/mock-imds/rootfs/tmp"
cp "$bin_dir/mock-imds" "$stage/mock-imds/"
build_image mock-imds ci/docker/mock-imds.Dockerfile "$stage/mock-imds"

# imds-proxy: its binary plus iptables (nft) and conntrack from this host.
mkdir -p "$stage/imds-proxy/rootfs"
cp "$bin_dir/imds-proxy" "$stage/imds-proxy/"
ipt="$(command -v iptables || true)"
ct="$(command -v conntrack || true)"
[ -n "$ipt" ] && [ -n "$ct" ] || { log "iptables and conntrack must be installed on the host (scripts/bootstrap installs them)"; exit 2; }
# iptables via alternatives resolves to iptables-nft; ship the nft multi-binary under every name it answers to.
# `ip` too: imds-proxy runs `ip netns exec` when pointed at a namespace, and the kind manifests use this image
# to give the per-node mock pod 169.254.169.254 (ci/manifests/kind/mock-imds.yaml).
rootfs="$stage/imds-proxy/rootfs"
nft_multi="$(readlink -f "$ipt")"
ip_bin="$(readlink -f "$(command -v ip)")"
copy_file "$rootfs" "$nft_multi" "/usr/sbin/$(basename "$nft_multi")"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "$(basename "$nft_multi")" "$rootfs/usr/sbin/$n"
done
copy_file "$rootfs" "$(readlink -f "$ct")" /usr/sbin/conntrack
copy_file "$rootfs" "$ip_bin" /usr/sbin/ip
copy_libs "$rootfs" "$nft_multi" "$(readlink -f "$ct")" "$ip_bin"
xt_dir=/usr/lib/x86_64-linux-gnu/xtables
if [ -d "$xt_dir" ]; then
  mkdir -p "$rootfs$xt_dir"
  cp -a "$xt_dir/." "$rootfs$xt_dir/"
  copy_libs "$rootfs" "$xt_dir"/*.so
fi
# iptables needs a writable /run for its lock (the DaemonSet mounts the node's /run/xtables.lock there) and
# /etc/ethertypes-free operation is fine for IPv4 nat. /tmp for good measure.
mkdir -p "$rootfs/run" "$rootfs/tmp" "$rootfs/etc"
build_image imds-proxy ci/docker/imds-proxy.Dockerfile "$stage/imds-proxy"

# imds-probe: std only, static; /tmp so the first layer is not empty (see mock-imds above).
mkdir -p "$stage/imds-probe/rootfs/tmp"
chmod 1777 "$stage/imds-probe/rootfs/tmp"
cp "$bin_dir/imds-probe" "$stage/imds-probe/"
build_image imds-probe ci/docker/imds-probe.Dockerfile "$stage/imds-probe"

# mock-arm: static, like mock-imds.
mkdir -p "$stage/mock-arm/rootfs/tmp"
chmod 1777 "$stage/mock-arm/rootfs/tmp"
cp "$bin_dir/mock-arm" "$stage/mock-arm/"
build_image mock-arm ci/docker/mock-arm.Dockerfile "$stage/mock-arm"

# Smoke check: the images run (no network needed).
docker run --rm "imds-conformance/mock-imds:$version" --version >/dev/null
docker run --rm --entrypoint /usr/sbin/iptables "imds-conformance/imds-proxy:$version" --version >&2
docker run --rm "imds-conformance/imds-proxy:$version" --version >/dev/null
docker run --rm "imds-conformance/imds-probe:$version" --version >/dev/null
docker run --rm "imds-conformance/mock-arm:$version" --version >/dev/null
log "images built and smoke-checked in $((SECONDS - start_s))s: imds-conformance/{mock-imds,imds-proxy,imds-probe,mock-arm}:$version"
