"""Drive real Python Azure clients against the mock IMDS (used by mock-imds/tests/real_clients.rs).

Usage: python python_clients.py CASES_JSON
  CASES_JSON: a JSON list of {"name", "client": "azure-identity"|"msal", "resource",
  optional "client_id" | "object_id" | "resource_id"}.
The environment must carry AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:PORT (the mock).
Prints one JSON object {name: result} on stdout, where result is
  {"ok": true, "token": str, "expires_on": int|null, "expires_in": int|null} or
  {"ok": false, "error_type": str, "error": str}.
Exit status 0 whenever every case ran (failures are data, judged by the Rust test).
"""

import json
import sys

from azure.identity import CredentialUnavailableError, ManagedIdentityCredential  # noqa: F401
import msal
import requests


def run_azure_identity(case):
    kwargs = {}
    if case.get("client_id"):
        kwargs["client_id"] = case["client_id"]
    elif case.get("object_id"):
        kwargs["identity_config"] = {"object_id": case["object_id"]}
    elif case.get("resource_id"):
        # azure-identity's key is "resource_id"; it sends it to IMDS as msi_res_id.
        kwargs["identity_config"] = {"resource_id": case["resource_id"]}
    credential = ManagedIdentityCredential(**kwargs)
    scope = case["resource"].rstrip("/") + "/.default"
    token = credential.get_token(scope)
    return {"ok": True, "token": token.token, "expires_on": token.expires_on, "expires_in": None}


def run_msal(case):
    if case.get("client_id"):
        identity = msal.UserAssignedManagedIdentity(client_id=case["client_id"])
    elif case.get("object_id"):
        identity = msal.UserAssignedManagedIdentity(object_id=case["object_id"])
    elif case.get("resource_id"):
        identity = msal.UserAssignedManagedIdentity(resource_id=case["resource_id"])
    else:
        identity = msal.SystemAssignedManagedIdentity()
    client = msal.ManagedIdentityClient(identity, http_client=requests.Session())
    result = client.acquire_token_for_client(resource=case["resource"])
    if "access_token" in result:
        return {
            "ok": True,
            "token": result["access_token"],
            "expires_on": None,
            "expires_in": result.get("expires_in"),
        }
    return {
        "ok": False,
        "error_type": str(result.get("error")),
        "error": str(result.get("error_description")),
    }


def main():
    cases = json.loads(sys.argv[1])
    results = {}
    for case in cases:
        runner = run_msal if case["client"] == "msal" else run_azure_identity
        try:
            results[case["name"]] = runner(case)
        except Exception as exc:  # the Rust side asserts on the exception type
            results[case["name"]] = {"ok": False, "error_type": type(exc).__name__, "error": str(exc)}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
