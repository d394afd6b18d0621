#!/usr/bin/env bash
# ci/dockerd.sh start|stop|status — a Docker engine for the image build and the testcontainers tests.
#
# start: if an engine already answers (`docker info` with the caller's DOCKER_HOST), use it and change
#        nothing. Otherwise install Debian's docker.io when dockerd is missing (apt-get, idempotent) and start
#        our own dockerd with every piece of state (data root, exec root, pidfile, socket, log) under one
#        fresh temporary directory, then wait until `docker info` answers on that socket.
#        stdout carries exactly one line, `export DOCKER_HOST=unix://...`, so callers do
#            eval "$(ci/dockerd.sh start)"
#        Everything else (what was done, and why) goes to stderr.
# stop:  end exactly the dockerd this script started (by the PID in its state file: TERM, then KILL after a
#        bounded wait) and remove its temporary directory. An engine we did not start is never touched.
#        Concurrent users share one dockerd: each `start` that reuses ours counts a user, each `stop` drops
#        one, and only the last `stop` ends it (both under flock on the state file's lock).
# status: print the state file, if any.
#
# The dockerd we start is deliberately quiet on the host: --iptables=false, --ip6tables=false and
# --ip-forward=false, so it adds no iptables chains and flips no sysctls in the root network namespace
# (published ports still work through docker-proxy, which is all the tests need; containers get no outbound
# NAT, which nothing here needs: no image is ever pulled). Its bridge is the default docker0.
#
# Environment: IMDS_DOCKERD_STATE (state file, default /tmp/imds-conformance-dockerd.state),
#              IMDS_DOCKERD_TIMEOUT (seconds to wait for the engine, default 60).
set -euo pipefail

state_file="${IMDS_DOCKERD_STATE:-/tmp/imds-conformance-dockerd.state}"
timeout_s="${IMDS_DOCKERD_TIMEOUT:-60}"

log() { printf 'ci/dockerd.sh: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

install_engine() {
  if command -v dockerd >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    log "dockerd is not installed and apt-get is not available: install a Docker engine"
    return 2
  fi
  log "dockerd not found: installing docker.io from the distribution's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  # --no-install-recommends: no cgroupfs-mount/git/etc.; docker.io's hard dependencies (containerd, runc,
  # iptables, tini) are what dockerd needs.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >&2
  command -v dockerd >/dev/null 2>&1 || { log "docker.io installed but dockerd is not on PATH"; return 2; }
  log "installed $(dockerd --version)"
}

write_state() {
  {
    echo "IMDS_DOCKERD_PID=${IMDS_DOCKERD_PID:-}"
    echo "IMDS_DOCKERD_DIR=${IMDS_DOCKERD_DIR:-}"
    echo "IMDS_DOCKER_ENGINE_HOST=${IMDS_DOCKER_ENGINE_HOST:-}"
    echo "IMDS_DOCKER_HOST=${IMDS_DOCKER_HOST:-}"
    echo "IMDS_DOCKER0_CREATED=${IMDS_DOCKER0_CREATED:-}"
    echo "IMDS_DOCKERD_USERS=${IMDS_DOCKERD_USERS:-1}"
  } >"$state_file"
}

cmd_start() {
  if [ -f "$state_file" ]; then
    local IMDS_DOCKER_HOST="" IMDS_DOCKERD_USERS=1
    # shellcheck disable=SC1090
    . "$state_file"
    if [ -n "$IMDS_DOCKER_HOST" ] && DOCKER_HOST="$IMDS_DOCKER_HOST" engine_answers; then
      IMDS_DOCKERD_USERS=$((IMDS_DOCKERD_USERS + 1))
      write_state
      log "already started (state $state_file): $IMDS_DOCKER_HOST, now $IMDS_DOCKERD_USERS user(s)"
      echo "export DOCKER_HOST=$IMDS_DOCKER_HOST"
      return 0
    fi
    log "stale state file $state_file: cleaning up what it names"
    really_stop
  fi
  if command -v docker >/dev/null 2>&1 && engine_answers; then
    # Not ours: no state file, so `stop` leaves it alone.
    log "a Docker engine already answers (${DOCKER_HOST:-unix:///var/run/docker.sock}); using it, starting nothing"
    echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"
    return 0
  fi
  install_engine
  command -v docker >/dev/null 2>&1 || { log "docker CLI missing after install"; return 2; }

  IMDS_DOCKERD_PID="" IMDS_DOCKER0_CREATED="" IMDS_DOCKERD_USERS=1
  IMDS_DOCKERD_DIR="$(mktemp -d /tmp/imds-dockerd.XXXXXX)"
  local dir="$IMDS_DOCKERD_DIR"
  mkdir -p "$dir/data" "$dir/exec"
  IMDS_DOCKER_ENGINE_HOST="unix://$dir/docker.sock"
  ip link show docker0 >/dev/null 2>&1 || IMDS_DOCKER0_CREATED=1
  log "starting dockerd: data-root=$dir/data exec-root=$dir/exec socket=$dir/docker.sock log=$dir/dockerd.log"
  # setsid: the daemon must outlive this script and must not receive the caller's Ctrl-C directly (and it
  # must not inherit the lock on fd 9);
  # `stop` ends it by PID.
  setsid dockerd \
    --data-root "$dir/data" \
    --exec-root "$dir/exec" \
    --pidfile "$dir/dockerd.pid" \
    --host "$IMDS_DOCKER_ENGINE_HOST" \
    --iptables=false --ip6tables=false --ip-forward=false \
    >"$dir/dockerd.log" 2>&1 </dev/null 9>&- &
  IMDS_DOCKERD_PID=$!
  write_state

  local waited=0
  until DOCKER_HOST="$IMDS_DOCKER_ENGINE_HOST" engine_answers; do
    if ! kill -0 "$IMDS_DOCKERD_PID" 2>/dev/null || [ "$waited" -ge "$timeout_s" ]; then
      log "dockerd (pid $IMDS_DOCKERD_PID) did not come up within ${timeout_s}s; its log:"
      tail -n 30 "$dir/dockerd.log" >&2 || true
      really_stop
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "dockerd (pid $IMDS_DOCKERD_PID) answers after ${waited}s: $(DOCKER_HOST="$IMDS_DOCKER_ENGINE_HOST" docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
  IMDS_DOCKER_HOST="$IMDS_DOCKER_ENGINE_HOST"
  write_state
  echo "export DOCKER_HOST=$IMDS_DOCKER_HOST"
}

stop_pid() { # name pid grace_seconds
  local name="$1" pid="$2" grace="$3" waited=0
  [ -n "$pid" ] || return 0
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) is not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt "$grace" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) still running after ${grace}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  log "stopped $name (pid $pid)"
}

cmd_stop() {
  if [ ! -f "$state_file" ]; then
    log "nothing started by this script (no $state_file): nothing to stop"
    return 0
  fi
  local IMDS_DOCKERD_PID="" IMDS_DOCKERD_DIR="" IMDS_DOCKER_ENGINE_HOST="" IMDS_DOCKER0_CREATED="" IMDS_DOCKER_HOST=""
  local IMDS_DOCKERD_USERS=1
  # shellcheck disable=SC1090
  . "$state_file"
  if [ "$IMDS_DOCKERD_USERS" -gt 1 ]; then
    IMDS_DOCKERD_USERS=$((IMDS_DOCKERD_USERS - 1))
    write_state
    log "dockerd (pid $IMDS_DOCKERD_PID) still has $IMDS_DOCKERD_USERS user(s): leaving it running"
    return 0
  fi
  really_stop
}

really_stop() {
  [ -f "$state_file" ] || return 0
  local IMDS_DOCKERD_PID="" IMDS_DOCKERD_DIR="" IMDS_DOCKER_ENGINE_HOST="" IMDS_DOCKER0_CREATED=""
  # shellcheck disable=SC1090
  . "$state_file"
  if [ -n "$IMDS_DOCKERD_PID" ] && kill -0 "$IMDS_DOCKERD_PID" 2>/dev/null; then
    # Containers left running by a failed test would keep containerd shims alive; remove them first
    # (bounded). This is our own engine: every container on it is a test's.
    local left
    left="$(DOCKER_HOST="$IMDS_DOCKER_ENGINE_HOST" timeout 10 docker ps -aq 2>/dev/null || true)"
    if [ -n "$left" ]; then
      log "removing leftover containers: $(echo "$left" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      DOCKER_HOST="$IMDS_DOCKER_ENGINE_HOST" timeout 30 docker rm -f $left >/dev/null 2>&1 || true
    fi
  fi
  stop_pid dockerd "$IMDS_DOCKERD_PID" 30
  if [ -n "$IMDS_DOCKER0_CREATED" ] && ip link show docker0 >/dev/null 2>&1; then
    ip link delete docker0 2>/dev/null && log "removed the docker0 bridge our dockerd created"
  fi
  if [ -n "$IMDS_DOCKERD_DIR" ] && [ -d "$IMDS_DOCKERD_DIR" ]; then
    case "$IMDS_DOCKERD_DIR" in
      /tmp/imds-dockerd.*)
        # The managed containerd may leave mounts (overlay, shm) under our directory; unmount what is left
        # there only, deepest first, before removing it.
        if command -v findmnt >/dev/null 2>&1; then
          { findmnt -rn -o TARGET | grep "^$IMDS_DOCKERD_DIR/" | sort -r || true; } | while read -r m; do
            umount -l "$m" 2>/dev/null || true
          done
        fi
        rm -rf "$IMDS_DOCKERD_DIR" && log "removed $IMDS_DOCKERD_DIR"
        ;;
      *) log "refusing to remove unexpected directory $IMDS_DOCKERD_DIR" ;;
    esac
  fi
  rm -f "$state_file"
}

cmd_status() {
  if [ -f "$state_file" ]; then cat "$state_file"; else log "no dockerd started by this script"; fi
}

# One start/stop at a time (the user count and the directory are shared state).
exec 9>"$state_file.lock"
flock 9

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
