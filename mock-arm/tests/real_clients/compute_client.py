"""Drive the Azure SDK for Python's compute client against mock-arm (used by mock-arm/tests/real_clients.rs).

Usage: python compute_client.py SETUP_JSON
  SETUP_JSON: {"base_url", "ca", "token", "subscription", "resource_group", "vm", "vmss",
               "identity", "forbidden", "throttled", "missing_vm"}
The SDK is used as a controller would: a bearer-token credential (here a token the Rust test obtained from
mock-imds), `base_url` pointing at mock-arm over https with its CA trusted, the LRO poller of `begin_update`,
the SDK's own exception types. Client retries are off (`retry_total=0`) so a 429 surfaces as the exception
the caller sees once the retry budget is spent. Prints one JSON object {case: result}; exit status 0
whenever every case ran (failures are data, judged by the Rust test).
"""

import json
import sys
import time

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient


class StaticToken:
    """A TokenCredential holding one token (azure-identity is not needed for a token we already have)."""

    def __init__(self, token):
        self._token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self._token, int(time.time()) + 3600)


def identities(resource):
    ids = resource.identity.user_assigned_identities if resource.identity else None
    return {k: {"principal_id": v.principal_id, "client_id": v.client_id} for k, v in (ids or {}).items()}


def error_result(e):
    err = getattr(e, "error", None)
    return {
        "ok": False,
        "error_type": type(e).__name__,
        "status": getattr(e, "status_code", None),
        "code": getattr(err, "code", None),
        "message": getattr(err, "message", None) or str(e),
    }


def update(operations, rg, name, body):
    start = time.monotonic()
    poller = operations.begin_update(rg, name, body)
    initial = poller.status()
    result = poller.result(timeout=120)
    return {
        "ok": True,
        "initial_status": initial,
        "final_status": poller.status(),
        "provisioning_state": result.properties.provisioning_state if result.properties else None,
        "identity_type": result.identity.type if result.identity else None,
        "identities": identities(result),
        "seconds": round(time.monotonic() - start, 1),
    }


def main():
    s = json.loads(sys.argv[1])
    client = ComputeManagementClient(
        StaticToken(s["token"]),
        s["subscription"],
        base_url=s["base_url"],
        connection_verify=s["ca"],
        retry_total=0,
    )
    rg = s["resource_group"]
    add = {"identity": {"type": "UserAssigned", "userAssignedIdentities": {s["identity"]: {}}}}
    cases = {
        "vm-add": lambda: update(client.virtual_machines, rg, s["vm"], add),
        "vmss-add": lambda: update(client.virtual_machine_scale_sets, rg, s["vmss"], add),
        "vm-remove": lambda: update(
            client.virtual_machines, rg, s["vm"],
            {"identity": {"type": "UserAssigned", "userAssignedIdentities": {s["identity"]: None}}},
        ),
        "vm-get": lambda: {"ok": True, "identities": identities(client.virtual_machines.get(rg, s["vm"]))},
        "not-found": lambda: client.virtual_machines.get(rg, s["missing_vm"]),
        "forbidden": lambda: update(
            client.virtual_machines, rg, s["vm"],
            {"identity": {"type": "UserAssigned", "userAssignedIdentities": {s["forbidden"]: {}}}},
        ),
        "throttled": lambda: update(
            client.virtual_machine_scale_sets, rg, s["vmss"],
            {"identity": {"type": "UserAssigned", "userAssignedIdentities": {s["throttled"]: {}}}},
        ),
    }
    results = {}
    for name, run in cases.items():
        try:
            out = run()
            results[name] = out if isinstance(out, dict) else {"ok": True}
        except (ResourceNotFoundError, HttpResponseError) as e:
            results[name] = error_result(e)
        except Exception as e:  # noqa: BLE001 - reported to the Rust test as data
            results[name] = {"ok": False, "error_type": type(e).__name__, "message": str(e)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
