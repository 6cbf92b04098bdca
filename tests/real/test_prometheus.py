"""A real Prometheus (Debian's `/usr/bin/prometheus`) scrapes olla's `/internal/metrics` every
second while a short load goes through olla to two `olla-mock` backends; Prometheus's HTTP API
must then return the exact request counts and the histogram buckets per endpoint and model.
Also checks olla's JSON access log (one line per request, with its request id).

Prometheus is a hard requirement: without it the test fails (CI installs it, see `.ci/run`)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import ManagedProcess, free_port, http_get, mock_backend, wait_until

PROMETHEUS = os.environ.get("OLLA_TEST_PROMETHEUS") or shutil.which("prometheus") or "/usr/bin/prometheus"

OAI_MODEL = "alpha"
OLLAMA_MODEL = "beta:1b"
TOKENS = 4
N_OPENAI = 12
N_OLLAMA = 8
N_MISSING = 3


class Prometheus(ManagedProcess):
    name = "prometheus"

    def __init__(self, workdir: Path, target: str):
        super().__init__(workdir / "prometheus.log")
        self.workdir = workdir
        self.port = free_port()
        self.target = target

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Prometheus":
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n  - job_name: olla\n    metrics_path: /internal/metrics\n"
            f"    static_configs:\n      - targets: ['{self.target}']\n"
        )
        self._spawn([
            PROMETHEUS,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ])
        wait_until(lambda: http_get(self.base + "/-/ready")[0] == 200, timeout=30, interval=0.2,
                   desc="prometheus ready")
        return self

    def query(self, expr: str) -> list[dict]:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None


@pytest.fixture
def prometheus_bin() -> str:
    if not (os.path.isfile(PROMETHEUS) and os.access(PROMETHEUS, os.X_OK)):
        pytest.fail(f"prometheus not found at {PROMETHEUS}: install Debian's `prometheus` package "
                    "(.ci/run does) or set OLLA_TEST_PROMETHEUS", pytrace=False)
    return PROMETHEUS


def post_json(url: str, body: dict, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_prometheus_scrapes_request_counts_and_histograms(prometheus_bin, olla_mock, olla, tmp_path):
    a = olla_mock("gpu-a", models=[OAI_MODEL], tokens=TOKENS, token_delay_ms=5)
    b = olla_mock("gpu-b", models=[OLLAMA_MODEL], tokens=TOKENS, token_delay_ms=5)
    o = olla([mock_backend(a, "openai-compatible"), mock_backend(b, "ollama")],
             overrides={"logging": {"format": "json"},
                        "discovery": {"model_discovery": {"interval": "2s"}}})
    wait_until(lambda: b"beta" in http_get(o.url("/olla/proxy/v1/models"))[1]
               and b"alpha" in http_get(o.url("/olla/proxy/v1/models"))[1],
               timeout=20, interval=0.1, desc="models discovered")
    prom = Prometheus(tmp_path, f"127.0.0.1:{o.port}")
    try:
        prom.start()
        wait_until(lambda: prom.scalar('up{job="olla"}') == 1.0, timeout=20, interval=0.25,
                   desc="prometheus scrapes olla")

        chat = {"messages": [{"role": "user", "content": "hi"}]}
        for i in range(N_OPENAI):
            s, _ = post_json(o.url("/olla/proxy/v1/chat/completions"), {**chat, "model": OAI_MODEL},
                             {"x-request-id": f"prom-oai-{i}"})
            assert s == 200
        for i in range(N_OLLAMA):
            s, body = post_json(o.url("/olla/ollama/api/chat"), {**chat, "model": OLLAMA_MODEL, "stream": True})
            assert s == 200 and b'"done":true' in body.replace(b" ", b"")
        for _ in range(N_MISSING):
            s, _ = post_json(o.url("/olla/proxy/v1/chat/completions"), {**chat, "model": "nobody-serves-this"})
            assert s == 404

        def counted(endpoint: str, model: str, route: str, want: int):
            expr = (f'olla_proxy_requests_total{{endpoint="{endpoint}",model="{model}",'
                    f'route="{route}",status_class="2xx"}}')
            return prom.scalar(expr) == float(want)

        wait_until(lambda: counted("gpu-a", OAI_MODEL, "openai", N_OPENAI)
                   and counted("gpu-b", OLLAMA_MODEL, "ollama", N_OLLAMA),
                   timeout=30, interval=0.5, desc="request counts in prometheus")

        by_pair = {(r["metric"]["endpoint"], r["metric"]["model"]): float(r["value"][1])
                   for r in prom.query("sum by (endpoint, model) (olla_proxy_requests_total)")}
        assert by_pair == {("gpu-a", OAI_MODEL): N_OPENAI, ("gpu-b", OLLAMA_MODEL): N_OLLAMA,
                           ("none", "other"): N_MISSING}, by_pair
        assert prom.scalar("olla_requests_total") == N_OPENAI + N_OLLAMA + N_MISSING

        # Histogram buckets per endpoint and model: cumulative, ending at the request count.
        buckets = prom.query('olla_request_duration_seconds_bucket{endpoint="gpu-a",model="alpha",'
                             'route="openai",status_class="2xx"}')
        les = sorted((float(r["metric"]["le"]), float(r["value"][1])) for r in buckets)
        assert len(les) >= 10, les
        counts = [c for _, c in les]
        assert counts == sorted(counts), les
        assert les[-1] == (float("inf"), N_OPENAI), les
        streamed = prom.query('olla_request_ttfb_seconds_bucket{endpoint="gpu-b",model="beta:1b",le="+Inf"}')
        assert [float(r["value"][1]) for r in streamed] == [N_OLLAMA], streamed
        q = prom.scalar('histogram_quantile(0.5, sum by (le) (olla_request_duration_seconds_bucket'
                        '{endpoint="gpu-a"}))')
        assert q is not None and 0 < q < 10, q
        # Gaps between streamed chunks are recorded for the NDJSON stream.
        gaps = prom.scalar('sum(olla_stream_chunk_gap_seconds_count{endpoint="gpu-b"})')
        assert gaps is not None and gaps >= 1, gaps
        # Tokens read from the answers' usage (OpenAI usage; Ollama eval_count).
        assert prom.scalar('olla_tokens_output_total{endpoint="gpu-a",model="alpha"}') == N_OPENAI * TOKENS
        assert prom.scalar('olla_tokens_output_total{endpoint="gpu-b",model="beta:1b"}') == N_OLLAMA * TOKENS
        assert prom.scalar('olla_endpoint_requests_total{endpoint="gpu-a"}') == N_OPENAI
        assert prom.scalar('olla_endpoint_up{endpoint="gpu-b",status="healthy"}') == 1
    finally:
        prom.stop()

    # The JSON access log: one line per request, carrying its request id.
    def access_lines():
        out = []
        for line in o.logs().splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("target") == "olla::access":
                out.append(v)
        return out

    lines = wait_until(lambda: [l for l in access_lines() if l.get("fields", {}).get("request_id") == "prom-oai-3"],
                       timeout=5, desc="access log line of prom-oai-3")
    assert len(lines) == 1, lines
    f = lines[0]["fields"]
    assert f["status"] == 200 and f["endpoint"] == "gpu-a" and f["model"] == OAI_MODEL, f
    assert f["route"] == "openai" and f["tokens_out"] == TOKENS and f["client"] == "127.0.0.1", f
    assert f["duration_ms"] >= 0 and f["bytes_out"] > 0, f
