#!/usr/bin/env python3
"""SSE pass-through check: per-event arrival times of chat-completion streams.

Opens one raw TCP connection per stream (standard library only), sends a
`"stream": true` chat completion, decodes the chunked response by hand and
timestamps every `data:` line at the moment the recv() that completed it
returned. Streams to the targets are interleaved (a, b, a, b, ...) so a busy
machine affects every target alike.

An https:// target is reached over TLS (the ssl module, HTTP/1.1 offered in ALPN, the
certificate verified against --cacert or the system roots); the handshake completes before
the clock starts, as the TCP connect does.

Reports per target: TTFB (request sent -> first `data:` line), the median /
p99 / max gap between consecutive `data:` lines (pooled over all streams) and
the median stream duration. The first target is the reference: for every other
target the differences are printed and, with --max-diff-ms, checked (median
and p99 gap must be within that many ms of the reference). Exit status 1 if a
check fails, 2 on a protocol error.

Usage:
  sse_gaps.py [-n STREAMS] [--model M] [--max-diff-ms 1] [--check NAME,...] \
      [--cacert CA.pem] NAME=http[s]://127.0.0.1:PORT/path [NAME=URL ...]
"""

import argparse
import json
import os
import socket
import ssl
import statistics
import sys
import time
from urllib.parse import urlsplit


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


class Dechunker:
    """Incremental HTTP/1.1 chunked-transfer decoder."""

    def __init__(self):
        self.buf = bytearray()
        self.need = None  # bytes left in the current chunk (+2 for CRLF), None = reading a size line
        self.done = False

    def feed(self, data):
        self.buf += data
        out = bytearray()
        while not self.done:
            if self.need is None:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(bytes(self.buf[:i]).split(b";")[0].strip() or b"0", 16)
                del self.buf[: i + 2]
                if size == 0:
                    self.done = True  # trailers (if any) are ignored
                    break
                self.need = size + 2
            else:
                take = min(self.need, len(self.buf))
                if take == 0:
                    break
                out += self.buf[:take]
                del self.buf[:take]
                self.need -= take
                if self.need == 0:
                    del out[-2:]  # the CRLF after the chunk data
                    self.need = None
        return bytes(out)


def tls_context(cafile):
    """Client context for https:// targets: verifies the server against cafile (or the system
    roots), offers HTTP/1.1 only."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    # A server that closes without close_notify ends the stream like a TCP close would.
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    return ctx


def one_stream(url, body, timeout, tls=None):
    """Run one stream; returns (ttfb_s, [event times relative to request send], status)."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme in {url!r}")
    https = u.scheme == "https"
    host, port = u.hostname, u.port or (443 if https else 80)
    path = u.path + (("?" + u.query) if u.query else "")
    req = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        + (f"Authorization: Bearer {os.environ['CLIENT_KEY']}\r\n" if os.environ.get("CLIENT_KEY") else "")
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if https:
        try:
            sock = (tls or tls_context(None)).wrap_socket(sock, server_hostname=host)  # handshakes
        except BaseException:
            sock.close()
            raise
    try:
        t0 = time.perf_counter()
        sock.sendall(req)
        head = bytearray()
        chunked = False
        remaining = None  # content-length, if not chunked
        dech = Dechunker()
        pending = b""  # body bytes of an incomplete line
        events = []
        status = None
        while True:
            data = sock.recv(65536)
            t = time.perf_counter() - t0
            if not data:
                break
            if status is None:
                head += data
                i = head.find(b"\r\n\r\n")
                if i < 0:
                    continue
                lines = bytes(head[:i]).decode("latin-1").split("\r\n")
                status = int(lines[0].split()[1])
                for h in lines[1:]:
                    k, _, v = h.partition(":")
                    k, v = k.strip().lower(), v.strip().lower()
                    if k == "transfer-encoding" and "chunked" in v:
                        chunked = True
                    elif k == "content-length":
                        remaining = int(v)
                data = bytes(head[i + 4 :])
            if chunked:
                payload = dech.feed(data)
            else:
                payload = data
                if remaining is not None:
                    remaining -= len(data)
            buf = pending + payload
            *complete, pending = buf.split(b"\n")
            for line in complete:
                if line.startswith(b"data:"):
                    events.append(t)
            if (chunked and dech.done) or (remaining is not None and remaining <= 0):
                break
        if pending.startswith(b"data:"):
            events.append(time.perf_counter() - t0)
        return (events[0] if events else None), events, status
    finally:
        sock.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--streams", type=int, default=10, help="streams per target (default 10)")
    ap.add_argument("--model", default="m")
    ap.add_argument("--timeout", type=float, default=30.0, help="socket timeout, seconds")
    ap.add_argument("--max-diff-ms", type=float, default=None,
                    help="fail if a target's median or p99 gap differs from the first target's by more")
    ap.add_argument("--check", default=None,
                    help="comma-separated target names the bar applies to (default: all but the first)")
    ap.add_argument("--cacert", default=None,
                    help="CA file (PEM) to verify https:// targets against (default: system roots)")
    ap.add_argument("targets", nargs="+", metavar="NAME=URL")
    a = ap.parse_args()
    tls = tls_context(a.cacert)

    targets = []
    for t in a.targets:
        name, sep, url = t.partition("=")
        if not sep:
            ap.error(f"expected NAME=URL, got {t!r}")
        targets.append((name, url))
    body = json.dumps({
        "model": a.model, "stream": True,
        "messages": [{"role": "user", "content": "Count to twenty."}],
    }).encode()

    # One unrecorded warm-up stream per target (connection pools, caches).
    for _, url in targets:
        one_stream(url, body, a.timeout, tls)

    res = {name: {"ttfb": [], "gaps": [], "dur": [], "events": []} for name, _ in targets}
    for _ in range(a.streams):
        for name, url in targets:
            ttfb, ev, status = one_stream(url, body, a.timeout, tls)
            if status != 200 or not ev:
                print(f"ERROR: {name}: status {status}, {len(ev)} events", file=sys.stderr)
                return 2
            r = res[name]
            r["ttfb"].append(ttfb)
            r["gaps"] += [b - a_ for a_, b in zip(ev, ev[1:])]
            r["dur"].append(ev[-1])
            r["events"].append(len(ev))

    ms = lambda v: v * 1000.0
    summary = {}
    hdr = f"{'target':<10} {'streams':>7} {'events':>6} {'ttfb_p50':>9} {'ttfb_max':>9} " \
          f"{'gap_p50':>8} {'gap_p99':>8} {'gap_max':>8} {'dur_p50':>8}   (ms)"
    print(hdr)
    for name, _ in targets:
        r = res[name]
        s = {
            "ttfb_p50": ms(statistics.median(r["ttfb"])),
            "ttfb_max": ms(max(r["ttfb"])),
            "gap_p50": ms(statistics.median(r["gaps"])),
            "gap_p99": ms(percentile(r["gaps"], 99)),
            "gap_max": ms(max(r["gaps"])),
            "dur_p50": ms(statistics.median(r["dur"])),
            "events": statistics.median(r["events"]),
        }
        summary[name] = s
        print(f"{name:<10} {len(r['ttfb']):>7} {s['events']:>6.0f} {s['ttfb_p50']:>9.2f} {s['ttfb_max']:>9.2f} "
              f"{s['gap_p50']:>8.2f} {s['gap_p99']:>8.2f} {s['gap_max']:>8.2f} {s['dur_p50']:>8.2f}")

    ref_name = targets[0][0]
    ref = summary[ref_name]
    check = [n for n, _ in targets[1:]] if a.check is None else a.check.split(",")
    ok = True
    for name, _ in targets[1:]:
        s = summary[name]
        d50 = s["gap_p50"] - ref["gap_p50"]
        d99 = s["gap_p99"] - ref["gap_p99"]
        dttfb = s["ttfb_p50"] - ref["ttfb_p50"]
        line = (f"{name} - {ref_name}: gap_p50 {d50:+.2f} ms, gap_p99 {d99:+.2f} ms, "
                f"ttfb_p50 {dttfb:+.2f} ms, dur_p50 {s['dur_p50'] - ref['dur_p50']:+.2f} ms")
        if a.max_diff_ms is not None and name in check:
            passed = abs(d50) <= a.max_diff_ms and abs(d99) <= a.max_diff_ms
            ok &= passed
            line += f"  -> {'PASS' if passed else 'FAIL'} (bar: |gap diff| <= {a.max_diff_ms:g} ms)"
        print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
