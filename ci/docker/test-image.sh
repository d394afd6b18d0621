#!/usr/bin/env bash
# ci/docker/test-image.sh BINARY DOCKERFILE NAME:TAG — build a throw-away test image of one of our FROM scratch
# images from a binary cargo built for the current test run (not a static release build), so an image test
# always tests the code of this checkout.
#
# The build context is a staging directory holding the binary under its own file name and `rootfs/` with a
# world-writable /tmp and every shared library `ldd` lists for the binary (absolute paths kept), which is what
# the release Dockerfiles under ci/docker/ copy. The classic builder is used (DOCKER_BUILDKIT=0: present in
# every engine; FROM scratch needs no registry). Prints the image name on stdout; exits non-zero with the
# reason on stderr. Needs a Docker engine (`eval "$(ci/dockerd.sh start)"`).
set -euo pipefail

log() { printf 'ci/docker/test-image.sh: %s\n' "$*" >&2; }
[ $# -eq 3 ] || { log "usage: ci/docker/test-image.sh BINARY DOCKERFILE NAME:TAG"; exit 2; }
bin="$1"
dockerfile="$2"
image="$3"
[ -x "$bin" ] || { log "$bin is not an executable file"; exit 2; }
[ -f "$dockerfile" ] || { log "$dockerfile does not exist"; exit 2; }

stage="$(mktemp -d "${TMPDIR:-/tmp}/test-image.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/rootfs/tmp"
chmod 1777 "$stage/rootfs/tmp"
cp "$bin" "$stage/$(basename "$bin")"

# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"; a static binary
# makes ldd exit 1 with "not a dynamic executable", which leaves nothing to copy.
libs="$(ldd "$bin" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }' || true)"
for lib in $libs; do
  mkdir -p "$stage/rootfs$(dirname "$lib")"
  # cp -L: the file lands under the name the loader asks for, not as a dangling link.
  cp -L "$lib" "$stage/rootfs$lib"
done

DOCKER_BUILDKIT=0 docker build --quiet --file "$dockerfile" --build-arg VERSION=test --tag "$image" "$stage" >/dev/null \
  || { log "docker build $image failed"; exit 1; }
log "built $image from $bin"
printf '%s\n' "$image"
