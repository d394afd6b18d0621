#!/usr/bin/env python3
"""Turn JUnit XML files into a Markdown summary (for $GITHUB_STEP_SUMMARY): totals per file, then every
failure with its message. Standard library only.

usage: ci/junit-summary.py TITLE FILE.xml... >> "$GITHUB_STEP_SUMMARY"
Exit 0 even when tests failed (the test step itself carries the verdict); 2 when a file is missing or invalid.
"""

import sys
import xml.etree.ElementTree as ET


def cases(root):
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    for suite in suites:
        for case in suite.iter("testcase"):
            yield suite.get("name", ""), case


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    title, paths = argv[1], argv[2:]
    rows, failures = [], []
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as e:
            print(f"junit-summary: {path}: {e}", file=sys.stderr)
            return 2
        passed = failed = skipped = 0
        for suite, case in cases(root):
            name = f"{suite}::{case.get('name')}" if suite else case.get("name")
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is not None:
                failed += 1
                failures.append((name, (bad.get("message") or bad.text or "").strip().splitlines()[:1]))
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
        rows.append((path, passed, failed, skipped))
    icon = "❌" if failures else "✅"
    print(f"### {icon} {title}\n")
    print("| report | passed | failed | skipped |\n| --- | ---: | ---: | ---: |")
    for path, p, f, s in rows:
        print(f"| `{path}` | {p} | {f} | {s} |")
    if failures:
        print("\n**Failures**\n")
        for name, msg in failures:
            detail = f": {msg[0][:200]}" if msg else ""
            print(f"- `{name}`{detail}")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
