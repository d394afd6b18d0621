// Node @azure/identity's ManagedIdentityCredential asking for one token, unmodified, as an application in a
// pod would (the conformance harness's SDK area runs it inside a pod's network namespace, where
// 169.254.169.254 is what the pod sees; no AZURE_POD_IDENTITY_AUTHORITY_HOST, so the SDK probes IMDS first
// as it does on a VM).
//
// Usage: node sdk_client.js RESOURCE [CLIENT_ID]
// Prints one JSON line: {"sdk", "ok": true, "elapsed_ms", "token"} or
// {"sdk", "ok": false, "elapsed_ms", "error_type", "error"}. The time covers the credential's construction
// and getToken, not node's start. Exit status 0 whenever the SDK was driven (a failure is data).
"use strict";

const { ManagedIdentityCredential } = require("@azure/identity");
const { version } = require("@azure/identity/package.json");

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 1 || args.length > 2) {
    process.stderr.write("usage: node sdk_client.js RESOURCE [CLIENT_ID]\n");
    return 2;
  }
  const [resource, clientId] = args;
  const out = { sdk: "@azure/identity " + version };
  const started = process.hrtime.bigint();
  try {
    const credential = clientId ? new ManagedIdentityCredential({ clientId }) : new ManagedIdentityCredential();
    const token = await credential.getToken(resource.replace(/\/+$/, "") + "/.default");
    if (token) {
      Object.assign(out, { ok: true, token: token.token });
    } else {
      Object.assign(out, { ok: false, error_type: "null", error: "getToken returned null" });
    }
  } catch (e) {
    const text = String(e && e.message ? e.message : e).split(/\s+/).join(" ");
    Object.assign(out, { ok: false, error_type: e && e.name ? e.name : typeof e, error: text });
  }
  out.elapsed_ms = Number((process.hrtime.bigint() - started) / 1000000n);
  process.stdout.write(JSON.stringify(out) + "\n");
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(String(e && e.stack ? e.stack : e) + "\n");
    process.exit(2);
  },
);
