#!/usr/bin/env bash
# ci/action.sh — the run steps of the repository's GitHub Action (action.yml), one subcommand per step:
#   prepare   system packages (scripts/bootstrap --no-just, as root) and the harness: built (release) from
#             this checkout with cargo, or $INPUT_HARNESS (a path or an http(s) URL), put in
#             $RUNNER_TEMP/imds-conformance/;
#   run       imds-conformance run as root with the INPUT_* settings; reports in $INPUT_REPORT_DIR
#             (junit.xml, report.json, summary.md); the summary appended to $GITHUB_STEP_SUMMARY; outputs
#             exit-code and verdict in $GITHUB_OUTPUT; exit 2 (or worse) from the harness fails this step;
#   verdict   fails (exit 1) on NOT CONFORMANT unless INPUT_FAIL_ON_NOT_CONFORMANT is false.
# Everything comes from the environment GitHub sets for a composite step (the `env:` of each step in
# action.yml, GITHUB_*, RUNNER_TEMP), so ci/test-action.sh runs the same steps locally.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${RUNNER_TEMP:-/tmp}/imds-conformance"
log() { printf 'imds-conformance action: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

prepare() {
  as_root "$root/scripts/bootstrap" --no-just
  mkdir -p "$bin_dir"
  local h="${INPUT_HARNESS:-}"
  case "$h" in
    "")
      command -v cargo >/dev/null 2>&1 || { log "cargo not found: add a Rust toolchain step, or give the harness input"; exit 2; }
      log "building imds-conformance and imds-proxy (release) from $root"
      (cd "$root" && cargo build --release --locked -p imds-conformance -p imds-proxy)
      cp "$root/target/release/imds-conformance" "$root/target/release/imds-proxy" "$bin_dir/"
      ;;
    http://* | https://*)
      log "downloading the harness from $h"
      curl -fsSL --retry 3 -o "$bin_dir/imds-conformance" "$h"
      chmod +x "$bin_dir/imds-conformance"
      ;;
    *)
      [ -x "$h" ] || { log "harness $h is not an executable file"; exit 2; }
      cp "$h" "$bin_dir/imds-conformance"
      # The built-in interceptor (imds-proxy) is looked for next to the harness.
      if [ -x "$(dirname "$h")/imds-proxy" ]; then cp "$(dirname "$h")/imds-proxy" "$bin_dir/"; fi
      ;;
  esac
  "$bin_dir/imds-conformance" --version
}

run() {
  : "${INPUT_INTERCEPTOR:?the interceptor input is required}"
  local out="${INPUT_REPORT_DIR:-imds-conformance-report}"
  mkdir -p "$out"
  rm -f "$out/junit.xml" "$out/report.json" "$out/summary.md"
  local args=(run --backend "${INPUT_BACKEND:-netns}" --interceptor "$INPUT_INTERCEPTOR"
    --report "junit=$out/junit.xml,json=$out/report.json,md=$out/summary.md")
  if [ -n "${INPUT_FEATURES:-}" ]; then args+=(--features "$INPUT_FEATURES"); fi
  if [ -n "${INPUT_SCENARIO:-}" ]; then args+=(--scenario "$INPUT_SCENARIO"); fi
  if [ -n "${INPUT_PROFILE:-}" ]; then args+=(--profile "$INPUT_PROFILE"); fi
  if [ -n "${INPUT_FOCUS:-}" ]; then args+=(--focus "$INPUT_FOCUS"); fi
  if [ -n "${INPUT_SKIP:-}" ]; then args+=(--skip "$INPUT_SKIP"); fi
  local code=0
  # As root, with the runner's PATH (the vendor's tools: python3, their binary…).
  as_root env "PATH=$PATH" NO_COLOR=1 "$bin_dir/imds-conformance" "${args[@]}" || code=$?
  as_root chown -R "$(id -u):$(id -g)" "$out"
  local verdict
  case "$code" in
    0) verdict="CONFORMANT" ;;
    1) verdict="NOT CONFORMANT" ;;
    *) verdict="ERROR" ;;
  esac
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    if [ -f "$out/summary.md" ]; then
      cat "$out/summary.md" >> "$GITHUB_STEP_SUMMARY"
    else
      printf '## imds-conformance\n\n**ERROR**: the harness stopped with exit code %s before a verdict; its message is in the step log.\n' "$code" >> "$GITHUB_STEP_SUMMARY"
    fi
  fi
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf 'exit-code=%s\nverdict=%s\n' "$code" "$verdict" >> "$GITHUB_OUTPUT"
  fi
  log "verdict: $verdict (exit $code); reports in $out"
  if [ "$code" -gt 1 ]; then exit "$code"; fi
}

verdict() {
  local code="${INPUT_EXIT_CODE:-}"
  case "$code" in
    0) log "CONFORMANT" ;;
    1)
      if [ "${INPUT_FAIL_ON_NOT_CONFORMANT:-true}" = "true" ]; then
        log "NOT CONFORMANT (the reasons are in the step summary and report.json's verdict)"
        exit 1
      fi
      log "NOT CONFORMANT (not failing: fail-on-not-conformant is false)"
      ;;
    *) log "no verdict (exit code '${code}')"; exit 2 ;;
  esac
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  verdict) verdict ;;
  *) log "usage: ci/action.sh prepare|run|verdict"; exit 2 ;;
esac
