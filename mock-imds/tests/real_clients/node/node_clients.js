// Drive the real Node @azure/identity client against the mock IMDS (used by mock-imds/tests/real_clients.rs).
//
// Usage: node node_clients.js CASES_JSON
//   CASES_JSON: a JSON list of {"name", "resource", optional "client_id" | "object_id" | "resource_id"}.
// The environment must carry AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:PORT (the mock).
// Prints one JSON object {name: result} on stdout: {"ok": true, "token", "expires_on"} or
// {"ok": false, "error_type", "error"}. Failures are data; the Rust test judges them.
"use strict";

const { ManagedIdentityCredential } = require("@azure/identity");

async function runCase(c) {
  let credential;
  if (c.client_id) {
    credential = new ManagedIdentityCredential({ clientId: c.client_id });
  } else if (c.object_id) {
    credential = new ManagedIdentityCredential({ objectId: c.object_id });
  } else if (c.resource_id) {
    credential = new ManagedIdentityCredential({ resourceId: c.resource_id });
  } else {
    credential = new ManagedIdentityCredential();
  }
  const scope = c.resource.replace(/\/+$/, "") + "/.default";
  try {
    const token = await credential.getToken(scope);
    if (!token) {
      return { ok: false, error_type: "null", error: "getToken returned null" };
    }
    return { ok: true, token: token.token, expires_on: Math.floor(token.expiresOnTimestamp / 1000) };
  } catch (e) {
    return { ok: false, error_type: e && e.name ? e.name : typeof e, error: String(e && e.message ? e.message : e) };
  }
}

async function main() {
  const cases = JSON.parse(process.argv[2]);
  const results = {};
  for (const c of cases) {
    results[c.name] = await runCase(c);
  }
  process.stdout.write(JSON.stringify(results));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
  process.exit(2);
});
