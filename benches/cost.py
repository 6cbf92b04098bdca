#!/usr/bin/env python3
"""Instructions olla executes per proxied request, counted by callgrind, per configuration.

wrk figures on a shared 2-core machine move by +-15% between rounds, which hides a feature that
costs 3%. callgrind counts the instructions the olla process executes (all its threads): the
same binary, configuration and requests give the same count whatever else the machine does, so
the cost of a feature is the ratio of two counts. It is not time (cache misses, syscalls in the
kernel and lock waits are not in it): read it beside the pinned wrk run of `load.sh`.

For each variant and mode it starts one olla-mock and olla (under valgrind) with the variant's
configuration, sends WARMUP requests, zeroes the counters (`callgrind_control -z`), sends N
requests over one keep-alive connection, dumps the counters (`callgrind_control -d`) and divides.
Health checks, the breaker and metrics stay on as in the default configuration.

    python3 benches/cost.py                      # every variant, json and sse
    python3 benches/cost.py -v default,tracing   # some variants
    python3 benches/cost.py --bin-dir target/release -n 400
    python3 benches/cost.py -v default -m sse -n 100 --tokens 40 --token-delay-ms 5   # paced events

Variants: default; metrics-off (telemetry.metrics.enabled false); tracing (telemetry.otlp at
sample_ratio 1.0 to a collector this script runs, answering 200); tracing-down (the collector
port closed); keys (one auth.keys key, sent as a bearer token); rate-limits
(server.rate_limits global and per-IP, limits far above the load); edge (keys and rate limits);
tls (server.tls, the client over TLS with a CA this script makes with the openssl CLI).

Everything listens on 127.0.0.1; every process started is stopped on exit. Standard library
only (plus valgrind, and openssl for the tls variant).
"""

import argparse
import glob
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

MODEL = "m"
KEY = "sk-bench-cost-key"
VARIANTS = ["default", "metrics-off", "tracing", "tracing-down", "keys", "rate-limits", "edge", "tls"]
BODY = {
    "json": json.dumps({"model": MODEL, "stream": False,
                        "messages": [{"role": "user", "content": "Say hello in sixteen tokens."}]}),
    "sse": json.dumps({"model": MODEL, "stream": True,
                       "messages": [{"role": "user", "content": "Say hello in sixteen tokens."}]}),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, fn, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            if fn():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out after {secs}s waiting for {what}")


class Sink(http.server.BaseHTTPRequestHandler):
    """A collector that reads each export and answers 200."""

    protocol_version = "HTTP/1.1"
    received = 0

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        Sink.received += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def make_certs(work):
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ca_key, ca = f"{work}/ca.key", f"{work}/ca.pem"
    key, csr, crt, ext = f"{work}/srv.key", f"{work}/srv.csr", f"{work}/srv.pem", f"{work}/ext.cnf"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=olla bench CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", crt,
        "-days", "2", "-extfile", ext)
    return ca, crt, key


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, log):
        p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=60):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in self.procs:
            self.stop(p, 30)


def config(variant, olla_port, mock_port, sink_port, closed_port, certs):
    server = {"host": "127.0.0.1", "port": olla_port}
    cfg = {
        "server": server,
        "proxy": {"load_balancer": "round-robin"},
        "discovery": {"type": "static", "model_discovery": {"enabled": True},
                      "static": {"endpoints": [{"name": "mock-a", "url": f"http://127.0.0.1:{mock_port}",
                                                "type": "openai-compatible", "priority": 100,
                                                "check_interval": "2s"}]}},
        "logging": {"level": "warn"},
    }
    limits = {"global_requests_per_minute": 100_000_000,
              "per_ip_requests_per_minute": 100_000_000, "burst_size": 10_000_000}
    if variant == "metrics-off":
        cfg["telemetry"] = {"metrics": {"enabled": False}}
    elif variant in ("tracing", "tracing-down"):
        port = sink_port if variant == "tracing" else closed_port
        cfg["telemetry"] = {"otlp": {"endpoint": f"http://127.0.0.1:{port}", "sample_ratio": 1.0,
                                     "batch_interval": "1s"}}
    if variant in ("keys", "edge"):
        cfg["auth"] = {"keys": [{"name": "bench", "key": KEY}]}
    if variant in ("rate-limits", "edge"):
        server["rate_limits"] = limits
    if variant == "tls":
        ca, crt, key = certs
        server["tls"] = {"cert_file": crt, "key_file": key}
    return cfg


def connection(variant, port, ca):
    if variant == "tls":
        ctx = ssl.create_default_context(cafile=ca)
        return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=60)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=60)


def headers(variant):
    h = {"Content-Type": "application/json"}
    if variant in ("keys", "edge"):
        h["Authorization"] = f"Bearer {KEY}"
    return h


def send(conn, variant, mode, n):
    """n requests on one connection; every one must be a 200 with a whole body."""
    for _ in range(n):
        conn.request("POST", "/olla/proxy/v1/chat/completions", BODY[mode], headers(variant))
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or not body:
            raise SystemExit(f"{variant}/{mode}: status {r.status}: {body[:200]!r}")
        if variant in ("rate-limits", "edge") and r.getheader("X-RateLimit-Limit") is None:
            raise SystemExit(f"{variant}/{mode}: no X-RateLimit-Limit header: the limiter is off")


def measure(args, variant, mode, procs, work, mock_port, sink_port, closed_port, certs):
    olla_port = free_port()
    cfg_path = f"{work}/olla-{variant}-{mode}.yaml"
    with open(cfg_path, "w") as f:
        # YAML is a superset of JSON.
        json.dump(config(variant, olla_port, mock_port, sink_port, closed_port, certs), f)
    out = f"{work}/cg-{variant}-{mode}"
    olla = procs.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                        "--dump-instr=no", "--vgdb=yes",
                        f"{args.bin_dir}/olla", "-c", cfg_path], f"{work}/olla-{variant}-{mode}.log")
    ca = certs[0] if certs else None

    def routable():
        if olla.poll() is not None:
            raise SystemExit(f"olla exited: {open(f'{work}/olla-{variant}-{mode}.log').read()[-2000:]}")
        c = connection(variant, olla_port, ca)
        try:
            c.request("GET", "/olla/proxy/v1/models", headers=headers(variant))
            r = c.getresponse()
            return r.status == 200 and f'"id":"{MODEL}"' in r.read().decode()
        finally:
            c.close()

    wait_until("olla (under valgrind) to list the model", routable, 180)
    conn = connection(variant, olla_port, ca)
    send(conn, variant, mode, args.warmup)
    subprocess.run(["callgrind_control", "-z", str(olla.pid)], check=True, capture_output=True)
    start = time.monotonic()
    send(conn, variant, mode, args.n)
    wall = time.monotonic() - start
    before = set(glob.glob(f"{out}.{olla.pid}*"))
    subprocess.run(["callgrind_control", "-d", str(olla.pid)], check=True, capture_output=True)
    dumps = sorted(set(glob.glob(f"{out}.{olla.pid}*")) - before)
    conn.close()
    procs.stop(olla)
    total = 0
    for d in dumps:
        with open(d) as f:
            for line in f:
                m = re.match(r"^(?:summary|totals): (\d+)", line)
                if m:
                    total += int(m.group(1))
                    break
    if not dumps or total == 0:
        raise SystemExit(f"{variant}/{mode}: no callgrind dump")
    return total / args.n, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--variants", default=",".join(VARIANTS))
    ap.add_argument("-m", "--modes", default="json,sse")
    ap.add_argument("-n", type=int, default=300, help="measured requests per variant and mode")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--bin-dir", default=os.path.join(os.path.dirname(__file__), "..", "target", "release"))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per mock answer")
    ap.add_argument("--token-delay-ms", type=int, default=0,
                    help="pause between streamed tokens (paced: each event its own read and write)")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v}; known: {', '.join(VARIANTS)}")
    for tool in ["valgrind", "callgrind_control"] + (["openssl"] if "tls" in variants else []):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing tool: {tool}")
    work = tempfile.mkdtemp(prefix="olla-cost.")
    # Copied, so a concurrent cargo build cannot swap the binaries mid-run.
    for b in ("olla", "olla-mock"):
        shutil.copy(os.path.join(args.bin_dir, b), work)
    args.bin_dir = work
    procs = Procs()
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        certs = make_certs(work) if "tls" in variants else None
        mock_port = free_port()
        procs.start([f"{work}/olla-mock", "--port", str(mock_port), "--host", "127.0.0.1", "--name", "a",
                     "--models", MODEL, "--tokens", str(args.tokens),
                     "--token-delay-ms", str(args.token_delay_ms)], f"{work}/mock.log")
        wait_until("olla-mock", lambda: socket.create_connection(("127.0.0.1", mock_port), 1).close() or True, 15)
        closed_port = free_port()
        results = {}
        for mode in args.modes.split(","):
            for v in variants:
                ir, wall = measure(args, v, mode, procs, work, mock_port, sink.server_address[1],
                                   closed_port, certs)
                results[(v, mode)] = ir
                print(f"[cost] {mode:4} {v:13} {ir:12,.0f} instructions/request  ({args.n} in {wall:.1f}s)",
                      file=sys.stderr, flush=True)
        print(f"\ninstructions per request (callgrind, {args.n} requests after {args.warmup} warm-up; "
              f"{args.tokens} tokens {args.token_delay_ms} ms apart; ratio to default in the same run)")
        print(f"{'variant':14}" + "".join(f"{m:>22}" for m in args.modes.split(",")))
        for v in variants:
            row = f"{v:14}"
            for mode in args.modes.split(","):
                ir = results[(v, mode)]
                base = results.get(("default", mode))
                ratio = f" ({ir / base:.3f}x)" if base else ""
                row += f"{ir:>12,.0f}{ratio:>10}"
            print(row)
        if "tracing" in variants:
            print(f"\ncollector received {Sink.received} export requests")
    finally:
        procs.stop_all()
        sink.shutdown()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
