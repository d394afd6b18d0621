#!/usr/bin/env python3
"""ci/test-action.py — runs the composite action (action.yml) locally the way a GitHub runner does, so its
run steps are tested, not just linted.

For each step of `runs.steps`, in order: evaluates `if:` (only `always()`, `inputs.X == 'v'` and `&&` are
understood; anything else is an error, so a new condition cannot be silently skipped), substitutes
`${{ inputs.X }}` (given with --input NAME=VALUE, else the input's default; a missing required input is an
error), `${{ github.action_path }}` and `${{ steps.ID.outputs.K }}` in `env:` and `with:`, and runs `run:`
with `bash --noprofile --norc -eo pipefail` (GitHub's bash for composite steps) in the working directory,
with GITHUB_ACTION_PATH, GITHUB_STEP_SUMMARY, GITHUB_OUTPUT (fresh per step), GITHUB_WORKSPACE and
RUNNER_TEMP set. A `uses:` step is not run; for actions/upload-artifact its `path` must exist.
A failing step stops the run like on GitHub (later steps run only with `always()`).

Prints one JSON object on stdout (the steps' own output goes to stderr): {"steps": [{"name", "exit",
"skipped"}], "outputs": {...}, "summary": "..."};
exits with the first failing step's code (0 when all passed).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", action="append", default=[], help="NAME=VALUE (repeatable)")
    ap.add_argument("--workdir", default=os.getcwd(), help="the job's working directory (GITHUB_WORKSPACE)")
    a = ap.parse_args()
    with open(os.path.join(ROOT, "action.yml")) as f:
        action = yaml.safe_load(f)
    given = dict(kv.split("=", 1) for kv in a.input)
    declared = action.get("inputs", {})
    unknown = set(given) - set(declared)
    if unknown:
        sys.exit(f"test-action: unknown inputs {sorted(unknown)}")
    inputs = {}
    for name, spec in declared.items():
        if name in given:
            inputs[name] = given[name]
        elif spec.get("required") and "default" not in spec:
            sys.exit(f"test-action: input {name} is required")
        else:
            inputs[name] = str(spec.get("default", ""))
    tmp = tempfile.mkdtemp(prefix="test-action-")
    summary = os.path.join(tmp, "step_summary.md")
    open(summary, "w").close()
    outputs = {}  # step id -> {key: value}

    def value(expr):
        if expr == "github.action_path":
            return ROOT
        m = re.fullmatch(r"inputs\.([\w-]+)", expr)
        if m:
            return inputs[m.group(1)]
        m = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
        if m:
            return outputs.get(m.group(1), {}).get(m.group(2), "")
        sys.exit(f"test-action: expression not understood: {expr}")

    def subst(s):
        return EXPR.sub(lambda m: value(m.group(1)), str(s))

    def condition(cond, failed):
        if cond is None:
            return not failed
        terms = [t.strip() for t in cond.split("&&")]
        ok, has_always = True, False
        for t in terms:
            if t == "always()":
                has_always = True
                continue
            m = re.fullmatch(r"inputs\.([\w-]+)\s*==\s*'([^']*)'", t)
            if not m:
                sys.exit(f"test-action: condition not understood: {cond}")
            ok = ok and inputs[m.group(1)] == m.group(2)
        return ok and (has_always or not failed)

    report = {"steps": [], "outputs": {}, "summary": ""}
    first_failure = 0
    for i, step in enumerate(action["runs"]["steps"]):
        name = step.get("name", f"step {i}")
        if not condition(step.get("if"), first_failure != 0):
            report["steps"].append({"name": name, "exit": None, "skipped": True})
            continue
        if "uses" in step:
            with_ = {k: subst(v) for k, v in step.get("with", {}).items()}
            code = 0
            if step["uses"].startswith("actions/upload-artifact@"):
                path = os.path.join(a.workdir, with_["path"])
                code = 0 if os.path.exists(path) else 1
            report["steps"].append({"name": name, "exit": code, "skipped": False, "uses": step["uses"]})
        else:
            if step.get("shell") != "bash":
                sys.exit(f"test-action: step {name!r}: composite run steps need shell: bash")
            out_file = os.path.join(tmp, f"output-{i}")
            open(out_file, "w").close()
            env = dict(os.environ)
            env.update({k: subst(v) for k, v in step.get("env", {}).items()})
            env.update({
                "GITHUB_ACTION_PATH": ROOT, "GITHUB_STEP_SUMMARY": summary, "GITHUB_OUTPUT": out_file,
                "GITHUB_WORKSPACE": a.workdir, "RUNNER_TEMP": tmp, "GITHUB_ACTIONS": "true",
            })
            code = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                                  cwd=a.workdir, env=env, stdout=sys.stderr).returncode
            if "id" in step:
                with open(out_file) as f:
                    outputs[step["id"]] = dict(l.rstrip("\n").split("=", 1) for l in f if "=" in l)
            report["steps"].append({"name": name, "exit": code, "skipped": False})
        if code != 0 and first_failure == 0:
            first_failure = code
    for name, spec in action.get("outputs", {}).items():
        report["outputs"][name] = subst(spec["value"])
    with open(summary) as f:
        report["summary"] = f.read()
    print(json.dumps(report, indent=2))
    sys.exit(first_failure)


if __name__ == "__main__":
    main()
