"""Python azure-identity's ManagedIdentityCredential asking for one token, unmodified, as an application in
a pod would (the conformance harness's SDK area runs it inside a pod's network namespace, where
169.254.169.254 is what the pod sees; no AZURE_POD_IDENTITY_AUTHORITY_HOST, so the SDK probes IMDS first as
it does on a VM).

Usage: python sdk_client.py RESOURCE [CLIENT_ID]
Prints one JSON line: {"sdk", "ok": true, "elapsed_ms", "token"} or
{"sdk", "ok": false, "elapsed_ms", "error_type", "error"}. The time covers the credential's construction and
get_token, not the interpreter's start. Exit status 0 whenever the SDK was driven (a failure is data).
"""

import json
import sys
import time
from importlib.metadata import version


def main():
    if len(sys.argv) not in (2, 3):
        print("usage: sdk_client.py RESOURCE [CLIENT_ID]", file=sys.stderr)
        return 2
    resource = sys.argv[1]
    client_id = sys.argv[2] if len(sys.argv) == 3 else None
    from azure.identity import ManagedIdentityCredential

    out = {"sdk": "azure-identity " + version("azure-identity")}
    started = time.monotonic()
    try:
        kwargs = {"client_id": client_id} if client_id else {}
        credential = ManagedIdentityCredential(**kwargs)
        token = credential.get_token(resource.rstrip("/") + "/.default")
        out.update(ok=True, token=token.token)
    except Exception as exc:  # the harness judges the exception's type and text
        out.update(ok=False, error_type=type(exc).__name__, error=" ".join(str(exc).split()))
    out["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
