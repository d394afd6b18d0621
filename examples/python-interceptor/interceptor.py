#!/usr/bin/env python3
"""A minimal IMDS interceptor, written as a template for vendors (Python 3.9+, standard library only).

What it does, and therefore what it claims (see README.md next to this file):
  - metadataHeaderRequired: every request without `Metadata: true` gets NMI's 400 JSON, not forwarded;
  - blockInstanceMetadata:  pods get 403 on /metadata/instance in every spelling (the path is canonicalised
                            first), decided before any upstream call;
  - iptables:               a DNAT of 169.254.169.254:80 to 127.0.0.1:PORT in a chain of its own, installed
                            before /healthz says `Active`, re-checked every --reconcile-interval seconds,
                            removed on SIGTERM;
  - enableConntrackDeletion: once the rules are in, the kernel's tracked IMDS flows are deleted, so a pod's
                            keep-alive connection opened before we started cannot keep bypassing us;
  - passthrough:            every other path is relayed with IMDS's status, headers and body.
What it does NOT do: identity selection. It cannot tell which managed identity a pod may use, so it
refuses every token request (403, nothing forwarded) and claims neither `tokens` nor `hostToken`.
Forwarding token requests instead would hand every pod the VM's identities (security floor SEC-001).

Run by the harness as (see docs/VENDORS.md):
  imds-conformance run --backend netns \
    --features metadataHeaderRequired,blockInstanceMetadata,enableConntrackDeletion,iptables,passthrough \
    --interceptor "cmd:python3 examples/python-interceptor/interceptor.py --node {node} \
      --upstream {imds_ip}:{imds_port} --port {listen_port} --probe-port {probe_port} --reconcile-interval 2"
"""

import argparse
import http.client
import http.server
import json
import signal
import socketserver
import subprocess
import sys
import threading
import urllib.parse

IMDS_IP = "169.254.169.254"
CHAIN = "PY-IMDS-EXAMPLE"  # our own nat chain (iptables allows at most 28 characters)
MAX_BODY = 1 << 20  # largest request body we relay (bytes)
MAX_CONNECTIONS = 256  # concurrent client connections; more are closed at once
IO_TIMEOUT = 10.0  # seconds, for client sockets and the upstream call
# Hop-by-hop headers (RFC 9110 §7.6.1) are never relayed; lengths are recomputed.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
              "upgrade", "content-length"}
HEADER_ERROR = {"error": "invalid_request", "error_description": "Required metadata header not specified"}


def log(msg):
    print(f"python-interceptor: {msg}", file=sys.stderr, flush=True)


# --- iptables -------------------------------------------------------------------------------------------

def iptables(*args, check=True):
    """Runs `iptables -w -t nat ARGS`; returns whether it succeeded."""
    r = subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {r.stderr.strip()}")
    return r.returncode == 0


def rules(port):
    """The two rules we own: PREROUTING jumps to our chain, which DNATs IMDS traffic to our listener.
    PREROUTING only: host-network processes (OUTPUT) keep reaching IMDS directly."""
    match = ["-d", f"{IMDS_IP}/32", "-p", "tcp", "-m", "tcp", "--dport", "80"]
    return [
        ("PREROUTING", [*match, "-j", CHAIN]),
        (CHAIN, [*match, "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}"]),
    ]


def ensure_rules(port):
    """Idempotent: creates what is missing (a killed predecessor may have left the chain or the jump)."""
    iptables("-N", CHAIN, check=False)  # fails when it exists already: fine
    # The DNAT first, then the jump, so the jump never points at an empty chain.
    for chain, spec in reversed(rules(port)):
        if not iptables("-C", chain, *spec, check=False):
            iptables("-A", chain, *spec)
            log(f"installed: -A {chain} {' '.join(spec)}")


def remove_rules(port):
    for chain, spec in rules(port):
        while iptables("-D", chain, *spec, check=False):
            pass
    iptables("-F", CHAIN, check=False)
    iptables("-X", CHAIN, check=False)
    log("rules removed")


def delete_imds_flows():
    """Deletes tracked flows to IMDS (only those: other flows survive). A pod connection opened before the
    DNAT existed is tracked as going straight to IMDS and would keep doing so; without its entry its next
    packet meets our DNAT and the connection resets, so the client reconnects — through us."""
    r = subprocess.run(["conntrack", "-D", "-p", "tcp", "-d", IMDS_IP, "--dport", "80"],
                       capture_output=True, text=True, timeout=30)
    # conntrack reports "N flow entries have been deleted" on stderr; exit 1 just means there were none.
    log(f"conntrack: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f'exit {r.returncode}'}")


def check_route_localnet():
    """DNAT to 127.0.0.1 only works with route_localnet=1 (else the kernel drops the packets as martians)."""
    try:
        with open("/proc/sys/net/ipv4/conf/all/route_localnet") as f:
            if f.read().strip() != "1":
                log("WARNING: net.ipv4.conf.all.route_localnet is 0: DNAT to 127.0.0.1 will drop pod "
                    "traffic unless the pod interface has it; set it with "
                    "`sysctl -w net.ipv4.conf.all.route_localnet=1`")
    except OSError as e:
        log(f"WARNING: cannot read route_localnet: {e}")


# --- request policy -------------------------------------------------------------------------------------

def canonical_segments(target):
    """The path of a request target as IMDS would route it: percent-decoded (%2f included), lower case,
    backslashes read as slashes, `;params` dropped, empty and `.` segments dropped, `..` applied. Policy
    decisions use this form, so no spelling (`//`, `/./`, `%69`, `;x`, `\\`, upper case) slips past them."""
    path = target.split("?", 1)[0]
    out = []
    for seg in urllib.parse.unquote(path).lower().replace("\\", "/").split("/"):
        seg = seg.split(";", 1)[0]
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return out


def decide(target, from_pod):
    """None to forward, or (status, body) to answer locally."""
    segs = canonical_segments(target)
    # Token endpoints: IMDS's managed-identity token, and NMI's /host/token. No identity selection here,
    # so no caller gets a token through us (a pod must never get the VM's token).
    if segs[:3] == ["metadata", "identity", "oauth2"] or segs[:2] == ["host", "token"]:
        return 403, {"error": "forbidden",
                     "error_description": "this interceptor does not issue managed-identity tokens"}
    if from_pod and segs[:2] == ["metadata", "instance"]:
        return 403, {"error": "forbidden", "error_description": "instance metadata is blocked for pods"}
    return None


# --- HTTP -----------------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as IMDS clients use it
    timeout = IO_TIMEOUT  # per socket operation: a silent client cannot hold a thread forever
    upstream = None  # (host, port), set in main()

    def log_message(self, fmt, *args):
        log(f"{self.client_address[0]} {fmt % args}")

    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.log_request(status, len(body))

    def handle_any(self):
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length and not length.isdigit()):
            self.close_connection = True
            return self.answer(400, {"error": "invalid_request", "error_description": "unsupported body framing"})
        if length and int(length) > MAX_BODY:  # refused before reading it
            self.close_connection = True
            return self.answer(413, {"error": "invalid_request", "error_description": "body too large"})
        body = self.rfile.read(int(length)) if length else b""
        # 1. The Metadata header, on every path (header names are case-insensitive; the value is exact).
        if self.headers.get("Metadata") != "true":
            return self.answer(400, HEADER_ERROR)
        # 2. Local decisions. Traffic redirected from a pod keeps the pod's source address; only the node
        #    itself connects from 127.0.0.1 (host-network traffic to 169.254.169.254 never reaches us: it is
        #    not redirected). On the harness's loopback backend pods are other 127.x addresses.
        from_pod = self.client_address[0] != "127.0.0.1"
        local = decide(self.path, from_pod)
        if local is not None:
            return self.answer(*local)
        # 3. Everything else goes to IMDS unchanged (minus hop-by-hop headers).
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body:
            headers["Content-Length"] = str(len(body))
        try:
            conn = http.client.HTTPConnection(*self.upstream, timeout=IO_TIMEOUT)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read(MAX_BODY + 1)
                status, reason, resp_headers = resp.status, resp.reason, resp.getheaders()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError) as e:
            log(f"upstream {self.command} {self.path}: {e}")
            return self.answer(502, {"error": "bad_gateway", "error_description": "IMDS unreachable"})
        if len(data) > MAX_BODY:
            return self.answer(502, {"error": "bad_gateway", "error_description": "IMDS answer too large"})
        # IMDS's status, headers (Server and Content-Type included) and body, verbatim.
        self.send_response_only(status, reason)
        for k, v in resp_headers:
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.log_request(status, len(data))

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any


class Probe(http.server.BaseHTTPRequestHandler):
    """`GET /healthz` → `Active` once the rules are in place (NMI's contract), `Not Active` before."""
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT
    ready = threading.Event()

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        body = (b"Active" if self.ready.is_set() else b"Not Active") if self.path == "/healthz" else b"not found"
        self.send_response_only(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Threaded, with a bound on concurrent connections."""
    daemon_threads = True
    allow_reuse_address = True
    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", default="", help="node name (for the log only)")
    ap.add_argument("--upstream", required=True, help="IMDS address, HOST:PORT ({imds_ip}:{imds_port})")
    ap.add_argument("--port", type=int, required=True, help="listen on 127.0.0.1:PORT ({listen_port})")
    ap.add_argument("--probe-port", type=int, required=True, help="/healthz on 0.0.0.0:PORT ({probe_port})")
    ap.add_argument("--reconcile-interval", type=float, default=60.0,
                    help="seconds between rule checks (NMI's --ipt-update-interval-sec; default 60)")
    a = ap.parse_args()
    host, _, port = a.upstream.rpartition(":")
    Handler.upstream = (host, int(port))
    # Rules only when IMDS is the real address: on the harness's loopback backend the upstream is a mock on
    # 127.0.0.1 and the machine's own tables must not be touched.
    manage = host == IMDS_IP

    # SIGTERM / SIGINT are taken by the main loop itself (sigtimedwait below), never by a signal handler.
    # A handler that sets a threading.Event deadlocks when the signal lands while the main thread holds
    # that Event's lock inside Event.wait(): the process then never exits on SIGTERM, the harness kills it
    # after 15 s, and the rules stay behind (an occasional IPT-003 FAIL). Blocked here, before any thread
    # starts (threads inherit the mask), the signals stay pending until the loop collects them.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    if manage:
        check_route_localnet()
        ensure_rules(a.port)
        delete_imds_flows()
    proxy = Server(("127.0.0.1", a.port), Handler)
    probe = Server(("0.0.0.0", a.probe_port), Probe)
    for s in (proxy, probe):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    Probe.ready.set()
    log(f"node {a.node!r}: serving 127.0.0.1:{a.port} → {a.upstream}, probe :{a.probe_port}, "
        f"iptables {'on' if manage else 'off'}")

    # Reconcile loop on the main thread: put back whatever someone deleted, until SIGTERM (or SIGINT).
    while signal.sigtimedwait(stop_signals, a.reconcile_interval) is None:
        if manage:
            try:
                ensure_rules(a.port)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                log(f"reconcile failed: {e}")

    # SIGTERM: not ready, no rules (pods reach IMDS directly again), then exit.
    Probe.ready.clear()
    if manage:
        remove_rules(a.port)
    proxy.shutdown()
    probe.shutdown()
    log("stopped")


if __name__ == "__main__":
    main()
