"""OpenTelemetry traces from a real olla process to an OTLP/HTTP receiver in this test.

The receiver is a Python `http.server` decoding `POST /v1/traces` with the official
`opentelemetry-proto` package (so olla's hand-declared protobuf messages are checked against
the real schema). olla runs in front of two `olla-mock` processes: the first answers 503 (a
retryable status), so the request fails over and shows two attempt spans. A client
`traceparent` is continued: the spans carry its trace id, and each backend receives a
`traceparent` with that trace id and its attempt's span as the parent. With the receiver
down, requests are unaffected."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import mock_backend, wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
MODEL = "gpt-mock"
TOKENS = 5


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1 (a thread; stopped by the fixture)."""

    def __init__(self):
        self.spans: list = []  # (resource attributes dict, span)
        self.errors: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n)
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    outer.errors.append(f"{self.path} {self.headers.get('content-type')}")
                    self.send_response(400)
                    self.end_headers()
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with outer.lock:
                    for rs in req.resource_spans:
                        res = {kv.key: value(kv.value) for kv in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                outer.spans.append((res, s))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def snapshot(self):
        with self.lock:
            return list(self.spans)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(span) -> dict:
    return {kv.key: value(kv.value) for kv in span.attributes}


@pytest.fixture
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


def set_fault(mock, fault: dict) -> None:
    req = urllib.request.Request(mock.url + "/_mock/config", data=json.dumps({"fault": fault}).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200


def wait_models(o) -> None:
    def ready():
        with urllib.request.urlopen(o.url("/olla/proxy/v1/models"), timeout=5) as r:
            ids = [m["id"] for m in json.load(r)["data"]]
        return MODEL in ids
    wait_until(ready, timeout=20, interval=0.1, desc="model discovered")


def chat(o, headers: dict) -> tuple[int, dict, str]:
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(o.url("/olla/proxy/v1/chat/completions"), data=body,
                                 headers={"content-type": "application/json", **headers}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, dict(r.headers), r.read().decode()


def header(recorded: dict, name: str):
    return next((v for k, v in recorded["headers"] if k == name), None)


def test_request_and_attempt_spans_reach_the_collector_with_the_clients_trace(olla_mock, olla, receiver):
    bad = olla_mock("bad-gpu", models=(MODEL,), tokens=TOKENS, token_delay_ms=1)
    good = olla_mock("good-gpu", models=(MODEL,), tokens=TOKENS, token_delay_ms=1)
    o = olla(
        [mock_backend(bad, "openai-compatible", priority=100), mock_backend(good, "vllm", priority=50)],
        overrides={
            "telemetry": {"otlp": {"endpoint": f"http://127.0.0.1:{receiver.port}", "batch_interval": "100ms"}},
            "proxy": {"inject_stream_usage": True},
        },
        env={"OTEL_SERVICE_NAME": "olla-e2e"},
    )
    wait_models(o)
    set_fault(bad, {"mode": "error", "status": 503})

    status, headers, body = chat(o, {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
                                     "tracestate": "vendor=abc"})
    assert status == 200
    assert {k.lower(): v for k, v in headers.items()}.get("x-olla-endpoint") == "good-gpu"
    assert '"usage"' not in body, "the injected usage chunk is hidden from the client"

    # Each backend saw the client's trace id, with its own attempt span as the parent.
    parents = {}
    for m in (bad, good):
        last = m._get_json("/_mock/last_work")
        tp = header(last, "traceparent")
        assert tp is not None and tp.startswith(f"00-{TRACE_ID}-") and tp.endswith("-01"), tp
        assert header(last, "tracestate") == "vendor=abc"
        parents[m.name] = tp.split("-")[2]
    assert parents["bad-gpu"] != parents["good-gpu"]
    assert json.loads(good._get_json("/_mock/last_work")["body"])["stream_options"] == {"include_usage": True}

    def traced():
        s = [(r, sp) for r, sp in receiver.snapshot() if sp.trace_id.hex() == TRACE_ID]
        return s if len(s) >= 3 else None

    spans = wait_until(traced, timeout=15, desc="3 spans of the client's trace at the receiver")
    assert not receiver.errors, receiver.errors
    assert len(spans) == 3
    resource = spans[0][0]
    assert resource["service.name"] == "olla-e2e"
    assert resource["service.version"]
    server = [s for _, s in spans if s.kind == 2]
    client = sorted((s for _, s in spans if s.kind == 3), key=lambda s: s.start_time_unix_nano)
    assert len(server) == 1 and len(client) == 2
    req = server[0]
    assert req.trace_id.hex() == TRACE_ID
    assert req.parent_span_id.hex() == CLIENT_SPAN
    a = attrs(req)
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.system"] == "vllm"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.usage.output_tokens"] == TOKENS
    assert a["gen_ai.usage.input_tokens"] > 0
    assert a["gen_ai.server.time_to_first_token"] > 0
    assert a["http.response.status_code"] == 200
    assert a["olla.failovers"] == 1
    assert req.end_time_unix_nano > req.start_time_unix_nano
    for span, name in zip(client, ("bad-gpu", "good-gpu")):
        assert span.trace_id.hex() == TRACE_ID
        assert span.parent_span_id == req.span_id
        assert span.span_id.hex() == parents[name]
        assert attrs(span)["olla.endpoint"] == name
    assert attrs(client[0])["http.response.status_code"] == 503
    assert client[0].status.code == 2  # STATUS_CODE_ERROR
    assert attrs(client[1])["http.response.status_code"] == 200


def test_requests_are_unaffected_when_the_receiver_is_down(olla_mock, olla):
    m = olla_mock("gpu", models=(MODEL,), tokens=TOKENS, token_delay_ms=1)
    # Bound but not listening: connections are refused, and no other process can take the port.
    hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold.bind(("127.0.0.1", 0))
    dead = hold.getsockname()[1]
    o = olla([mock_backend(m, "openai-compatible")],
             overrides={"telemetry": {"otlp": {"endpoint": f"http://127.0.0.1:{dead}",
                                               "batch_interval": "50ms", "timeout": "500ms"}}})
    wait_models(o)
    for _ in range(10):
        status, _, body = chat(o, {})
        assert status == 200
        assert "[DONE]" in body
    assert header(m._get_json("/_mock/last_work"), "traceparent") is not None
    assert o.is_running()
    hold.close()
