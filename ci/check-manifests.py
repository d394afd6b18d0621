#!/usr/bin/env python3
"""Validate every YAML file under ci/ and .github/workflows/, and compare a canonical summary of them with the
committed snapshot ci/manifests.snapshot (insta-style: a change in a manifest shows up as a reviewed diff).

Run through ci/check-manifests.sh (which finds a python3 with PyYAML). `--update` rewrites the snapshot.

Checks, per file type:
- every file parses as YAML (all documents);
- Kubernetes manifests (ci/manifests/**): apiVersion/kind is a known pair, metadata.name is set, namespaced
  kinds carry a namespace; workload selectors match their template labels, every container has an image and
  the images are this project's; references hold (DaemonSet -> ServiceAccount, ClusterRoleBinding -> ClusterRole
  and ServiceAccount); the CRDs are exactly aadpodidentity.k8s.io/v1's four (REFERENCE A.11), Namespaced,
  served and stored, named <plural>.<group>; imds-proxy's RBAC is exactly list/watch on pods and the four CRDs
  (no secrets, no writes) and its DaemonSet is NMI-shaped (hostNetwork, NET_ADMIN+NET_RAW, xtables lock,
  NODE_NAME from spec.nodeName, NMI's flags);
- kind configs (ci/kind/*.yaml): kind.x-k8s.io/v1alpha4 Cluster, one control plane and at least two workers;
- workflows (.github/workflows/*.yml): triggers and jobs, each job has runs-on and steps, every `ci/...`
  script a step runs exists and is executable, and matrix `scenario`/`config` values name existing
  scenarios/<name>.yaml and ci/kind/<name>.yaml files.
"""

import difflib
import os
import re
import sys

import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SNAPSHOT = os.path.join(ROOT, "ci", "manifests.snapshot")

KNOWN = {
    ("v1", "Namespace"): False,
    ("v1", "ServiceAccount"): True,
    ("v1", "ConfigMap"): True,
    ("v1", "Pod"): True,
    ("apps/v1", "DaemonSet"): True,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): False,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): False,
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): False,
}
CRD_KINDS = {
    "AzureIdentity": "azureidentities",
    "AzureIdentityBinding": "azureidentitybindings",
    "AzureAssignedIdentity": "azureassignedidentities",
    "AzurePodIdentityException": "azurepodidentityexceptions",
}
PROXY_RBAC = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["aadpodidentity.k8s.io"],
        "resources": sorted(CRD_KINDS.values()),
        "verbs": ["list", "watch"],
    },
]
NMI_ARGS = [
    "--node=$(NODE_NAME)",
    "--http-probe-port=8085",
    "--enableScaleFeatures=true",
    "--metadata-header-required=true",
]
IMAGE_RE = re.compile(r"^imds-conformance/(mock-imds|imds-proxy):[0-9][0-9A-Za-z.+-]*$")

errors = []


def fail(path, msg):
    errors.append(f"{os.path.relpath(path, ROOT)}: {msg}")


def load_all(path):
    with open(path, encoding="utf-8") as f:
        try:
            return [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            fail(path, f"not valid YAML: {e}")
            return []


def files(sub, exts=(".yaml", ".yml")):
    base = os.path.join(ROOT, sub)
    out = []
    for dirpath, _, names in os.walk(base):
        out += [os.path.join(dirpath, n) for n in names if n.endswith(exts)]
    return sorted(out)


def pod_spec_summary(spec):
    out = []
    for key in ("hostNetwork", "serviceAccountName", "priorityClassName"):
        if key in spec:
            out.append(f"{key}={spec[key]}")
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        sc = c.get("securityContext", {})
        caps = sc.get("capabilities", {}).get("add", [])
        out.append(
            f"container {c.get('name')} image={c.get('image')} caps={','.join(caps) or '-'}"
            f" args={' '.join(c.get('command', []) + c.get('args', []))}"
        )
    return out


def check_workload(path, doc, summary):
    spec = doc.get("spec", {})
    sel = spec.get("selector", {}).get("matchLabels", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        fail(path, f"{doc['metadata']['name']}: selector {sel} does not match template labels {labels}")
    pod = spec.get("template", {}).get("spec", {})
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        if not c.get("name") or not c.get("image"):
            fail(path, f"container without name or image: {c}")
        elif not IMAGE_RE.match(c["image"]):
            fail(path, f"container {c['name']}: image {c['image']} is not one this project builds")
    summary += ["  " + s for s in pod_spec_summary(pod)]
    return pod


def check_proxy_daemonset(path, pod):
    if pod.get("hostNetwork") is not True:
        fail(path, "imds-proxy must run with hostNetwork: true (it owns the node's aad-metadata chain)")
    (c,) = [c for c in pod.get("containers", []) if c.get("name") == "imds-proxy"] or [{}]
    caps = set(c.get("securityContext", {}).get("capabilities", {}).get("add", []))
    if caps != {"NET_ADMIN", "NET_RAW"}:
        fail(path, f"imds-proxy capabilities must be exactly NET_ADMIN, NET_RAW, not {sorted(caps)}")
    args = c.get("args", [])
    for a in NMI_ARGS:
        if a not in args:
            fail(path, f"imds-proxy lacks NMI's argument {a}")
    env = {e.get("name"): e for e in c.get("env", [])}
    if env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        fail(path, "NODE_NAME must come from the downward API (spec.nodeName)")
    mounts = {m.get("mountPath") for m in c.get("volumeMounts", [])}
    if "/run/xtables.lock" not in mounts:
        fail(path, "the xtables lock (/run/xtables.lock) must be mounted from the node")
    probe = c.get("livenessProbe", {}).get("httpGet", {})
    if probe.get("path") != "/healthz" or probe.get("port") != 8085:
        fail(path, f"liveness probe must be GET /healthz on 8085 (NMI), not {probe}")


def check_crd(path, doc, summary):
    spec = doc.get("spec", {})
    names = spec.get("names", {})
    group = spec.get("group")
    if group != "aadpodidentity.k8s.io":
        fail(path, f"unexpected CRD group {group}")
    if CRD_KINDS.get(names.get("kind")) != names.get("plural"):
        fail(path, f"unexpected CRD kind/plural {names.get('kind')}/{names.get('plural')}")
    if doc["metadata"]["name"] != f"{names.get('plural')}.{group}":
        fail(path, f"CRD name must be <plural>.<group>, not {doc['metadata']['name']}")
    if spec.get("scope") != "Namespaced":
        fail(path, "aadpodidentity CRDs are Namespaced")
    versions = spec.get("versions", [])
    if [(v.get("name"), v.get("served"), v.get("storage")) for v in versions] != [("v1", True, True)]:
        fail(path, f"exactly one version v1, served and stored: {versions}")
    for v in versions:
        schema = v.get("schema", {}).get("openAPIV3Schema", {})
        if schema.get("type") != "object" or "spec" not in schema.get("properties", {}):
            fail(path, "structural schema with a spec object required")
        props = schema.get("properties", {}).get("spec", {}).get("properties", {})
        summary.append(f"  spec fields: {', '.join(sorted(props))}")
    return names.get("kind")


def check_manifests():
    summary = []
    by_kind = {}
    crd_kinds = []
    for path in files("ci/manifests"):
        rel = os.path.relpath(path, ROOT)
        summary.append(f"# {rel}")
        for doc in load_all(path):
            if not isinstance(doc, dict):
                fail(path, "document is not a mapping")
                continue
            api, kind = doc.get("apiVersion"), doc.get("kind")
            meta = doc.get("metadata") or {}
            name = meta.get("name")
            if (api, kind) not in KNOWN:
                fail(path, f"unknown apiVersion/kind {api}/{kind}")
                continue
            if not name:
                fail(path, f"{kind} without metadata.name")
                continue
            namespaced = KNOWN[(api, kind)]
            ns = meta.get("namespace")
            if namespaced and not ns:
                fail(path, f"{kind} {name} needs metadata.namespace")
            if not namespaced and ns:
                fail(path, f"{kind} {name} is cluster-scoped but names namespace {ns}")
            summary.append(f"{api} {kind} {ns + '/' if ns else ''}{name}")
            by_kind.setdefault(kind, []).append((path, doc))
            if kind == "DaemonSet":
                pod = check_workload(path, doc, summary)
                if name == "imds-proxy":
                    check_proxy_daemonset(path, pod)
            elif kind == "CustomResourceDefinition":
                crd_kinds.append(check_crd(path, doc, summary))
            elif kind == "ClusterRole":
                rules = [
                    {k: sorted(r.get(k, [])) if k != "apiGroups" else r.get(k, []) for k in ("apiGroups", "resources", "verbs")}
                    for r in doc.get("rules", [])
                ]
                for r in rules:
                    summary.append(f"  rule {r['apiGroups']} {r['resources']} {r['verbs']}")
                if name == "imds-proxy" and rules != PROXY_RBAC:
                    fail(path, f"imds-proxy RBAC must be exactly {PROXY_RBAC}, not {rules}")
    if sorted(crd_kinds) != sorted(CRD_KINDS):
        errors.append(f"ci/manifests: CRDs {sorted(crd_kinds)} are not the four of REFERENCE A.11")
    # references
    sas = {(d["metadata"].get("namespace"), d["metadata"]["name"]) for _, d in by_kind.get("ServiceAccount", [])}
    roles = {d["metadata"]["name"] for _, d in by_kind.get("ClusterRole", [])}
    for path, d in by_kind.get("DaemonSet", []):
        sa = d["spec"]["template"]["spec"].get("serviceAccountName")
        if sa and (d["metadata"].get("namespace"), sa) not in sas:
            fail(path, f"DaemonSet {d['metadata']['name']} uses missing ServiceAccount {sa}")
    for path, d in by_kind.get("ClusterRoleBinding", []):
        if d.get("roleRef", {}).get("name") not in roles:
            fail(path, f"ClusterRoleBinding {d['metadata']['name']} refers to a missing ClusterRole")
        for s in d.get("subjects", []):
            if s.get("kind") == "ServiceAccount" and (s.get("namespace"), s.get("name")) not in sas:
                fail(path, f"ClusterRoleBinding subject {s} is not a ServiceAccount defined here")
    return summary


def check_kind_configs():
    summary = []
    for path in files("ci/kind"):
        docs = load_all(path)
        rel = os.path.relpath(path, ROOT)
        if len(docs) != 1:
            fail(path, "a kind config is one document")
            continue
        d = docs[0]
        if d.get("kind") != "Cluster" or d.get("apiVersion") != "kind.x-k8s.io/v1alpha4":
            fail(path, f"not a kind Cluster config: {d.get('apiVersion')}/{d.get('kind')}")
        roles = [n.get("role") for n in d.get("nodes", [])]
        if roles.count("control-plane") != 1 or roles.count("worker") < 2:
            fail(path, f"multi-node: one control-plane and >= 2 workers expected, got {roles}")
        mode = d.get("networking", {}).get("kubeProxyMode", "iptables")
        summary.append(f"# {rel}\nCluster nodes={','.join(roles)} kubeProxyMode={mode}")
    return summary


def check_workflows():
    summary = []
    for path in files(".github/workflows"):
        docs = load_all(path)
        rel = os.path.relpath(path, ROOT)
        if len(docs) != 1 or not isinstance(docs[0], dict):
            fail(path, "a workflow is one mapping")
            continue
        wf = docs[0]
        # YAML 1.1 reads the key `on` as True.
        triggers = wf.get("on", wf.get(True))
        if not triggers:
            fail(path, "no triggers (on:)")
        jobs = wf.get("jobs") or {}
        if not jobs:
            fail(path, "no jobs")
        summary.append(f"# {rel}\nworkflow {wf.get('name')!r} on={sorted(triggers) if isinstance(triggers, dict) else triggers}")
        for jid, job in jobs.items():
            if "runs-on" not in job or not job.get("steps"):
                fail(path, f"job {jid} needs runs-on and steps")
                continue
            matrix = job.get("strategy", {}).get("matrix", {})
            dims = {k: v for k, v in matrix.items() if isinstance(v, list)}
            summary.append(f"  job {jid} runs-on={job['runs-on']} matrix={dims or '-'} steps={len(job['steps'])}")
            # Matrix values that name files must name existing ones.
            values = {k: list(v) for k, v in dims.items() if k != "include"}
            for inc in matrix.get("include", []) or []:
                for k, v in inc.items():
                    values.setdefault(k, []).append(v)
            for key, fmt in (("scenario", "scenarios/{}.yaml"), ("config", "ci/kind/{}.yaml")):
                for v in values.get(key, []):
                    if not os.path.isfile(os.path.join(ROOT, fmt.format(v))):
                        fail(path, f"job {jid}: matrix {key}={v} but {fmt.format(v)} does not exist")
            for step in job["steps"]:
                for script in re.findall(r"(?<![\w/.-])(ci/[\w./-]+\.(?:sh|py))", step.get("run", "")):
                    full = os.path.join(ROOT, script)
                    if not os.path.isfile(full) or not os.access(full, os.X_OK):
                        fail(path, f"job {jid} runs {script}, which is missing or not executable")
    return summary


def main():
    update = "--update" in sys.argv[1:]
    summary = check_manifests() + check_kind_configs() + check_workflows()
    text = "\n".join(summary) + "\n"
    if errors:
        for e in errors:
            print(f"check-manifests: FAIL {e}", file=sys.stderr)
        print(f"check-manifests: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    if update or not os.path.exists(SNAPSHOT):
        with open(SNAPSHOT, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"check-manifests: wrote {os.path.relpath(SNAPSHOT, ROOT)} ({len(summary)} lines): review and commit it", file=sys.stderr)
        return 0
    with open(SNAPSHOT, encoding="utf-8") as f:
        old = f.read()
    if old != text:
        sys.stderr.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True), "ci/manifests.snapshot", "current"))
        print("check-manifests: FAIL the manifests changed; review the diff and run ci/check-manifests.sh --update", file=sys.stderr)
        return 1
    n_files = sum(1 for line in summary if line.startswith("# "))
    print(f"check-manifests: {n_files} files valid, snapshot matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
